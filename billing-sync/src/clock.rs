//! [`Clock`]: the one place billing-sync reads the time from, so tests can move it across
//! periods, renewals, expiries and retry backoffs instead of waiting.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

/// The time source. Cheap to clone: clones share one manual time.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// `None`: the system clock. `Some`: a time set by hand (tests), shared by the clones.
    manual: Option<Arc<Mutex<DateTime<Utc>>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands at `at` until [`Clock::set`] or [`Clock::advance`] moves it.
    pub fn manual(at: DateTime<Utc>) -> Clock {
        Clock {
            manual: Some(Arc::new(Mutex::new(at))),
        }
    }

    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            // Nothing awaits under this lock; a poisoned lock still holds a valid time.
            Some(at) => *at.lock().unwrap_or_else(|e| e.into_inner()),
            None => Utc::now(),
        }
    }

    /// Sets a manual clock to `at` (no effect on the system clock).
    pub fn set(&self, at: DateTime<Utc>) {
        if let Some(m) = &self.manual {
            *m.lock().unwrap_or_else(|e| e.into_inner()) = at;
        }
    }

    /// Moves a manual clock forward by `by` (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(m) = &self.manual {
            let mut at = m.lock().unwrap_or_else(|e| e.into_inner());
            *at += by;
        }
    }

    /// Whether this is a manual (test) clock.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_follow() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).expect("valid time");
        let clock = Clock::manual(start);
        let clone = clock.clone();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::days(31));
        assert_eq!(clone.now(), start + Duration::days(31));
        Clock::system().set(start);
        assert!(Clock::system().now() > start - Duration::days(36500));
    }
}
