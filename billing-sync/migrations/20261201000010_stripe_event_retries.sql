-- Stripe events are retried with exponential backoff for at least three days (webhook/retry.rs).
-- next_attempt_at: when the retry pass tries the event next; NULL once it is processed or
-- given up (it stays 'failed' until an operator retries it by hand).
ALTER TABLE stripe_events ADD COLUMN next_attempt_at TIMESTAMPTZ;

-- Events left unfinished by the old schedule (20 attempts, 5 s apart, then abandoned) are
-- due again at once; one received more than three days ago gets that one attempt, then
-- waits for an operator if it fails.
UPDATE stripe_events SET next_attempt_at = received_at WHERE status <> 'processed';

-- The retry pass: due events, soonest first.
CREATE INDEX stripe_events_due ON stripe_events (next_attempt_at)
    WHERE status <> 'processed' AND next_attempt_at IS NOT NULL;
-- The admin listing: newest first, optionally by status.
CREATE INDEX stripe_events_received ON stripe_events (received_at DESC);
CREATE INDEX stripe_events_status_received ON stripe_events (status, received_at DESC);
