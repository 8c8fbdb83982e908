-- Stripe webhooks: the raw event is stored before any effect; processing is retried from it.
ALTER TABLE stripe_events
    ALTER COLUMN processed_at DROP NOT NULL,
    ALTER COLUMN processed_at DROP DEFAULT,
    ADD COLUMN created     BIGINT,                         -- Stripe's event time (Unix s)
    ADD COLUMN payload     JSONB,                          -- the body as received
    ADD COLUMN status      TEXT NOT NULL DEFAULT 'processed'
                           CHECK (status IN ('pending', 'processed', 'failed')),
    ADD COLUMN attempts    INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN last_error  TEXT,
    ADD COLUMN received_at TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX stripe_events_unfinished ON stripe_events (created) WHERE status <> 'processed';

-- Subscription state as last read from Stripe, and since when a payment has failed.
ALTER TABLE customers
    ADD COLUMN subscription_period_end TIMESTAMPTZ,
    ADD COLUMN past_due_since          TIMESTAMPTZ,
    -- The plan whose allowance the current period holds: a mid-period upgrade grants the
    -- difference between it and the new plan, whatever order Stripe's events arrive in.
    ADD COLUMN allowance_plan          TEXT;
UPDATE customers SET allowance_plan = plan;
CREATE INDEX customers_past_due ON customers (past_due_since) WHERE past_due_since IS NOT NULL;
