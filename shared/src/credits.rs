//! Credits: integer millicredits inside, decimal strings with at most three decimals outside.
//!
//! Every balance, cost and transfer is a [`Millicredits`]. Users see credits (`"12.5"`);
//! the program adds and compares `i64` millicredits, with checked arithmetic so that an
//! overflow is an error, never a wrap.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Millicredits in one credit.
pub const MILLI_PER_CREDIT: i64 = 1000;

/// The largest amount any single value may hold: 10^15 millicredits (10^12 credits).
///
/// Kept well under 2^53 so that Redis' Lua (whose numbers are doubles) adds and compares
/// balances exactly; an amount above it is refused as `overflow`.
pub const AMOUNT_MAX: i64 = 1_000_000_000_000_000;

/// An amount of credits in thousandths of a credit. May be negative (a ledger delta);
/// amounts that users send are parsed with [`Millicredits::parse_amount`], which refuses
/// negatives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millicredits(i64);

/// Why a credit string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditsError {
    /// Empty input, stray characters, `"1,5"`, `"NaN"`, an exponent, …
    #[error("credits must be a decimal number such as \"12.5\", got {0:?}")]
    Malformed(String),
    /// More than three decimals (`"1.0001"`).
    #[error("credits have at most three decimals, got {0:?}")]
    TooPrecise(String),
    /// A minus sign where only non-negative amounts are allowed.
    #[error("credits must not be negative, got {0:?}")]
    Negative(String),
    /// Larger than [`AMOUNT_MAX`].
    #[error("credits amount is too large, got {0:?}")]
    Overflow(String),
}

impl Millicredits {
    /// Zero credits.
    pub const ZERO: Millicredits = Millicredits(0);

    /// Wraps a raw millicredit count.
    pub const fn new(millicredits: i64) -> Self {
        Millicredits(millicredits)
    }

    /// Whole credits, as configured in YAML (`credits_per_month: 1000`).
    pub fn from_credits(credits: i64) -> Option<Self> {
        credits
            .checked_mul(MILLI_PER_CREDIT)
            .filter(|m| m.abs() <= AMOUNT_MAX)
            .map(Millicredits)
    }

    /// The raw millicredit count.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// Whether this is below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Whether this is exactly zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + other`, or `None` past `i64`.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Millicredits)
    }

    /// `self - other`, or `None` past `i64`.
    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.0.checked_sub(other.0).map(Millicredits)
    }

    /// `-self`, or `None` for `i64::MIN`.
    pub fn checked_neg(self) -> Option<Self> {
        self.0.checked_neg().map(Millicredits)
    }

    /// The smaller of two amounts.
    pub fn min(self, other: Self) -> Self {
        Millicredits(self.0.min(other.0))
    }

    /// Parses a non-negative amount of credits as users write it: digits, optionally a dot
    /// and one to three decimals. Refuses signs, exponents, commas, spaces and more than
    /// [`AMOUNT_MAX`].
    pub fn parse_amount(text: &str) -> Result<Self, CreditsError> {
        if text.starts_with('-') {
            return Err(CreditsError::Negative(text.to_owned()));
        }
        Self::parse_signed(text)
    }

    /// Parses an amount that may start with `-` (ledger deltas, Redis values).
    pub fn parse_signed(text: &str) -> Result<Self, CreditsError> {
        let malformed = || CreditsError::Malformed(text.to_owned());
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match unsigned.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (unsigned, None),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let fraction = fraction.unwrap_or("");
        if unsigned.contains('.') && fraction.is_empty() {
            return Err(malformed());
        }
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        if fraction.len() > 3 {
            return Err(CreditsError::TooPrecise(text.to_owned()));
        }
        let overflow = || CreditsError::Overflow(text.to_owned());
        let whole: i64 = whole.trim_start_matches('0').parse().or_else(|_| {
            if whole.bytes().all(|b| b == b'0') {
                Ok(0)
            } else {
                Err(overflow())
            }
        })?;
        let mut milli: i64 = 0;
        for (i, digit) in fraction.bytes().enumerate() {
            milli += i64::from(digit - b'0') * 10_i64.pow(2 - i as u32);
        }
        let magnitude = whole
            .checked_mul(MILLI_PER_CREDIT)
            .and_then(|w| w.checked_add(milli))
            .filter(|m| *m <= AMOUNT_MAX)
            .ok_or_else(overflow)?;
        Ok(Millicredits(if negative { -magnitude } else { magnitude }))
    }
}

impl fmt::Display for Millicredits {
    /// Prints the shortest exact decimal: `12500` → `"12.5"`, `1000` → `"1"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let whole = magnitude / MILLI_PER_CREDIT as u64;
        let milli = magnitude % MILLI_PER_CREDIT as u64;
        if milli == 0 {
            return write!(f, "{sign}{whole}");
        }
        let fraction = format!("{milli:03}");
        write!(f, "{sign}{whole}.{}", fraction.trim_end_matches('0'))
    }
}

impl FromStr for Millicredits {
    type Err = CreditsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_signed(s)
    }
}

impl Serialize for Millicredits {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// JSON credits are strings only: a JSON number is refused, as the contract says.
impl<'de> Deserialize<'de> for Millicredits {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Millicredits;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("credits as a decimal string such as \"12.5\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Millicredits, E> {
                Millicredits::parse_amount(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_the_contract_examples() {
        assert_eq!(Millicredits::parse_amount("12.5"), Ok(Millicredits(12_500)));
        assert_eq!(Millicredits::parse_amount("0.001"), Ok(Millicredits(1)));
        assert_eq!(Millicredits::parse_amount("5"), Ok(Millicredits(5_000)));
        assert_eq!(
            Millicredits::parse_amount("007.250"),
            Ok(Millicredits(7_250))
        );
        assert_eq!(Millicredits(12_500).to_string(), "12.5");
        assert_eq!(Millicredits(1).to_string(), "0.001");
        assert_eq!(Millicredits(-500).to_string(), "-0.5");
        assert_eq!(Millicredits(0).to_string(), "0");
    }

    #[test]
    fn refuses_what_the_contract_refuses() {
        for bad in [
            "", "1,5", "NaN", "1e3", " 1", "1.", ".5", "+1", "1.2.3", "inf", "0x10",
        ] {
            assert!(
                matches!(
                    Millicredits::parse_amount(bad),
                    Err(CreditsError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Millicredits::parse_amount("1.0001"),
            Err(CreditsError::TooPrecise(_))
        ));
        assert!(matches!(
            Millicredits::parse_amount("-1"),
            Err(CreditsError::Negative(_))
        ));
        assert!(matches!(
            Millicredits::parse_amount("99999999999999999999999"),
            Err(CreditsError::Overflow(_))
        ));
        assert!(matches!(
            Millicredits::parse_amount("1000000000000.001"),
            Err(CreditsError::Overflow(_))
        ));
        assert_eq!(
            Millicredits::parse_amount("1000000000000"),
            Ok(Millicredits(AMOUNT_MAX))
        );
    }

    #[test]
    fn json_numbers_are_refused() {
        assert!(serde_json::from_str::<Millicredits>("5").is_err());
        assert_eq!(
            serde_json::from_str::<Millicredits>("\"5\"").ok(),
            Some(Millicredits(5000))
        );
        assert_eq!(
            serde_json::to_string(&Millicredits(5500)).ok().as_deref(),
            Some("\"5.5\"")
        );
    }

    proptest! {
        #[test]
        fn print_then_parse_round_trips(m in -AMOUNT_MAX..=AMOUNT_MAX) {
            let printed = Millicredits(m).to_string();
            prop_assert_eq!(Millicredits::parse_signed(&printed), Ok(Millicredits(m)));
        }

        #[test]
        fn parse_then_print_is_canonical(whole in 0i64..1_000_000_000_000, frac in 0u32..1000) {
            let text = format!("{whole}.{frac:03}");
            let m = Millicredits::parse_amount(&text).expect("in range");
            prop_assert_eq!(m.get(), whole * 1000 + i64::from(frac));
            let again = Millicredits::parse_amount(&m.to_string()).expect("printed form parses");
            prop_assert_eq!(again, m);
        }

        #[test]
        fn arithmetic_is_checked(a in any::<i64>(), b in any::<i64>()) {
            prop_assert_eq!(Millicredits(a).checked_add(Millicredits(b)).map(Millicredits::get), a.checked_add(b));
            prop_assert_eq!(Millicredits(a).checked_sub(Millicredits(b)).map(Millicredits::get), a.checked_sub(b));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,24}") {
            let _ = Millicredits::parse_amount(&s);
        }
    }
}
