-- An expiry hold: take up to a bucket's ledger remainder out of one balance field and mark
-- the point in the usage stream where it expires. billing-sync's consumer later expires
-- exactly what the ledger says is left at this point and settles the hold (gives back or
-- takes the difference). At most one hold per bucket is in flight (KEYS[3], until the
-- consumer settles it or ARGV[8] seconds pass). Bounded: reads at most ARGV[10] unread entries.
-- KEYS[1] account hash, KEYS[2] usage stream, KEYS[3] the bucket's hold marker
-- ARGV[1] field ('nt' | 'tr'), ARGV[2] most to take (millicredits), ARGV[3] customer,
-- ARGV[4] bucket, ARGV[5] limit ('' = all that is left), ARGV[6] ledger key, ARGV[7] time (ms),
-- ARGV[8] hold marker ttl (s), ARGV[9] consumer group, ARGV[10] most unread entries to read
-- The hold is the ledger's remainder plus the customer's unread refunds in that field (a
-- refund may restore credits to this very bucket before the mark): never less than what can
-- expire, so nothing that expires stays spendable. With more than ARGV[10] unread entries
-- the whole field is held. The consumer gives back what did not expire.
-- Returns {1, taken} marked, {0} a hold is already in flight, {-1} no account.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[8]) then
  return {0}
end
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local want = tonumber(ARGV[2])
local unread = unread_entries(KEYS[2], ARGV[9], tonumber(ARGV[10]))
if not unread then
  want = cur
else
  for _, e in ipairs(unread) do
    local f = entry_fields(e)
    if f['kind'] == 'refund' and f['customer'] == ARGV[3] then
      want = want + tonumber(f[ARGV[1]] or '0')
    end
  end
end
local take = math.min(want, math.max(cur, 0))
if take > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], string.format('%d', -take))
end
redis.call('XADD', KEYS[2], '*',
  'kind', 'expire', 'customer', ARGV[3], 'bucket', ARGV[4], 'field', ARGV[1],
  'taken', string.format('%d', take), 'limit', ARGV[5], 'key', ARGV[6], 'ts_ms', ARGV[7])
return {1, string.format('%d', take)}
