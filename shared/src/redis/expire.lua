-- An expiry hold: take up to a bucket's ledger remainder out of one balance field and mark
-- the point in the usage stream where it expires. billing-sync's consumer later expires
-- exactly what the ledger says is left at this point and settles the hold (gives back or
-- takes the difference). At most one hold per bucket is in flight (KEYS[3], until the
-- consumer settles it or ARGV[8] seconds pass). O(1).
-- KEYS[1] account hash, KEYS[2] usage stream, KEYS[3] the bucket's hold marker
-- ARGV[1] field ('nt' | 'tr'), ARGV[2] most to take (millicredits), ARGV[3] customer,
-- ARGV[4] bucket, ARGV[5] limit ('' = all that is left), ARGV[6] ledger key, ARGV[7] time (ms),
-- ARGV[8] hold marker ttl (s)
-- Returns {1, taken} marked, {0} a hold is already in flight, {-1} no account.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[8]) then
  return {0}
end
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local take = math.min(tonumber(ARGV[2]), math.max(cur, 0))
if take > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], string.format('%d', -take))
end
redis.call('XADD', KEYS[2], '*',
  'kind', 'expire', 'customer', ARGV[3], 'bucket', ARGV[4], 'field', ARGV[1],
  'taken', string.format('%d', take), 'limit', ARGV[5], 'key', ARGV[6], 'ts_ms', ARGV[7])
return {1, string.format('%d', take)}
