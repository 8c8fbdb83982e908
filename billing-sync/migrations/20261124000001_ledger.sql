-- The billing-sync ledger. Credits are BIGINT millicredits, money NUMERIC with a currency.
-- Ledger entries and the audit log are append-only: corrections are reversing entries.

CREATE TABLE customers (
    id                     TEXT PRIMARY KEY,
    external_id            TEXT NOT NULL UNIQUE,
    email                  TEXT NOT NULL,
    plan                   TEXT NOT NULL,
    status                 TEXT NOT NULL DEFAULT 'active'
                           CHECK (status IN ('active', 'past_due', 'canceled')),
    stripe_customer_id     TEXT UNIQUE,
    stripe_subscription_id TEXT,
    subscription_interval  TEXT CHECK (subscription_interval IN ('monthly', 'yearly')),
    subscription_status    TEXT,
    cancel_at_period_end   BOOLEAN NOT NULL DEFAULT FALSE,
    tax_exempt             TEXT NOT NULL DEFAULT 'none'
                           CHECK (tax_exempt IN ('none', 'exempt', 'reverse')),
    -- The current allowance period (monthly, also for yearly plans).
    period_start           TIMESTAMPTZ NOT NULL,
    period_end             TIMESTAMPTZ NOT NULL CHECK (period_end > period_start),
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX customers_period_end ON customers (period_end);

CREATE TABLE api_keys (
    id          UUID PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    key_hash    TEXT NOT NULL UNIQUE,          -- sha256 hex; the key itself is never stored
    prefix      TEXT NOT NULL,                 -- for display: "cg_AbCd"
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX api_keys_customer ON api_keys (customer_id);

-- A balance by source. `remaining` changes; every change is a ledger entry.
CREATE TABLE buckets (
    id           UUID PRIMARY KEY,
    customer_id  TEXT NOT NULL REFERENCES customers (id),
    kind         TEXT NOT NULL
                 CHECK (kind IN ('free_allowance', 'plan_allowance', 'purchased', 'granted', 'received')),
    amount       BIGINT NOT NULL CHECK (amount >= 0),
    remaining    BIGINT NOT NULL CHECK (remaining >= 0),
    transferable BOOLEAN NOT NULL,
    expires_at   TIMESTAMPTZ,
    period_start TIMESTAMPTZ,                  -- allowances: the period they belong to
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (kind <> 'free_allowance' OR NOT transferable)
);
CREATE INDEX buckets_customer ON buckets (customer_id) WHERE remaining > 0;
CREATE INDEX buckets_expiry ON buckets (expires_at) WHERE remaining > 0;
CREATE UNIQUE INDEX buckets_one_allowance_per_period
    ON buckets (customer_id, kind, period_start) WHERE period_start IS NOT NULL;

-- A ledger transaction: a set of entries that sums to zero, applied once per idempotency key.
CREATE TABLE ledger_txns (
    id              UUID PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('allocation', 'grant', 'usage', 'refund',
                                    'expiry', 'transfer', 'adjustment')),
    idempotency_key TEXT NOT NULL UNIQUE,      -- e.g. usage:debit:<request id>, transfer:<id>
    source_ref      TEXT,                      -- stream entry, transfer id, grant reason…
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Double entry: `account` is `customer:<id>` (with its bucket) or a `system:*` account.
CREATE TABLE ledger_entries (
    id          BIGSERIAL PRIMARY KEY,
    txn_id      UUID NOT NULL REFERENCES ledger_txns (id),
    account     TEXT NOT NULL,
    customer_id TEXT REFERENCES customers (id),
    bucket_id   UUID REFERENCES buckets (id),
    kind        TEXT NOT NULL CHECK (kind IN ('allocation', 'grant', 'usage', 'refund', 'expiry',
                                    'transfer_out', 'transfer_in', 'adjustment')),
    amount      BIGINT NOT NULL,               -- millicredits; + into the account, − out
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((customer_id IS NULL) = (bucket_id IS NULL))
);
CREATE INDEX ledger_entries_txn ON ledger_entries (txn_id);
CREATE INDEX ledger_entries_customer ON ledger_entries (customer_id) WHERE customer_id IS NOT NULL;

-- Usage events from the proxy's stream; a debit and its refund share the request id.
CREATE TABLE usage_events (
    id          BIGSERIAL PRIMARY KEY,
    request_id  TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('debit', 'refund')),
    customer_id TEXT NOT NULL,
    route       TEXT NOT NULL,
    cost        BIGINT NOT NULL CHECK (cost >= 0),
    nt          BIGINT NOT NULL,
    tr          BIGINT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    stream_id   TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (request_id, kind)
);
CREATE INDEX usage_events_customer_time ON usage_events (customer_id, occurred_at);

CREATE TABLE transfers (
    id            UUID PRIMARY KEY,
    from_customer TEXT NOT NULL REFERENCES customers (id),
    to_customer   TEXT NOT NULL REFERENCES customers (id),
    amount        BIGINT NOT NULL CHECK (amount > 0),
    note          TEXT NOT NULL DEFAULT '',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (from_customer <> to_customer)
);
CREATE INDEX transfers_from ON transfers (from_customer, created_at);
CREATE INDEX transfers_to ON transfers (to_customer, created_at);

CREATE TABLE stripe_events (
    event_id     TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- First answers to requests with an Idempotency-Key, replayed on retry (kept ≥ 24 h).
CREATE TABLE idempotency_records (
    scope        TEXT NOT NULL,                -- "admin" or "customer:<id>", plus the route
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,                -- sha256 of method, path and body
    status       INTEGER NOT NULL,
    body         JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    customer_id TEXT,
    before      JSONB,
    after       JSONB
);
CREATE INDEX audit_log_customer ON audit_log (customer_id, id DESC);

-- Append-only tables refuse UPDATE and DELETE.
CREATE FUNCTION creditgate_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER ledger_txns_append_only BEFORE UPDATE OR DELETE ON ledger_txns
    FOR EACH ROW EXECUTE FUNCTION creditgate_append_only();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION creditgate_append_only();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION creditgate_append_only();

-- Stream entries the consumer could not read, set aside (acknowledged) rather than guessed at.
CREATE TABLE usage_rejects (
    stream_id   TEXT NOT NULL,
    stream      TEXT NOT NULL,
    problem     TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, stream_id)
);
