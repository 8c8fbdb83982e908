-- Money over time: paid periods as Stripe says them, and where a bought bucket came from.

-- The subscription's billing period as Stripe last reported it (its item's
-- current_period_start/end); shown as is, never computed.
ALTER TABLE customers ADD COLUMN subscription_period_start TIMESTAMPTZ;

-- What a bucket was bought with (a pack's PaymentIntent), so a refunded or disputed charge
-- can take back what is left of it.
ALTER TABLE buckets ADD COLUMN source_ref TEXT;
CREATE INDEX buckets_source_ref ON buckets (source_ref) WHERE source_ref IS NOT NULL;

-- Packs whose charge was refunded or disputed: the pending take-back (its ledger key and
-- the most it takes), and the key of the last take-back the consumer posted. The expiry
-- sweep holds a pending one; the consumer posts what is left, at most the limit, never more.
ALTER TABLE buckets ADD COLUMN take_back_key TEXT;
ALTER TABLE buckets ADD COLUMN take_back_limit BIGINT CHECK (take_back_limit >= 0);
ALTER TABLE buckets ADD COLUMN take_back_done_key TEXT;
CREATE INDEX buckets_take_back_pending ON buckets (id)
    WHERE take_back_key IS NOT NULL AND take_back_key IS DISTINCT FROM take_back_done_key;

-- Every bucket of a customer (balances, the admin view), not only those holding credits.
CREATE INDEX buckets_customer_all ON buckets (customer_id);
