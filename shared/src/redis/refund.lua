-- Refund of a debited request whose upstream failed: give back exactly what was taken,
-- record a refund event, at most once per request id.
-- KEYS[1] account hash, KEYS[2] usage stream, KEYS[3] refund marker
-- ARGV[1] from_nt, ARGV[2] from_tr, ARGV[3] customer, ARGV[4] route, ARGV[5] request id,
-- ARGV[6] time (ms), ARGV[7] marker ttl (s), ARGV[8] reason
-- Returns the balance after the refund, or -1 if this request was already refunded.
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[7]) then
  return -1
end
local nt = tonumber(ARGV[1])
local tr = tonumber(ARGV[2])
-- While billing-sync rebuilds a lost account, the event alone carries the refund.
if redis.call('EXISTS', KEYS[1]) == 1 then
  if nt > 0 then redis.call('HINCRBY', KEYS[1], 'nt', ARGV[1]) end
  if tr > 0 then redis.call('HINCRBY', KEYS[1], 'tr', ARGV[2]) end
end
redis.call('XADD', KEYS[2], '*',
  'kind', 'refund', 'customer', ARGV[3], 'route', ARGV[4], 'request_id', ARGV[5],
  'cost', string.format('%d', nt + tr), 'nt', ARGV[1], 'tr', ARGV[2], 'ts_ms', ARGV[6],
  'reason', ARGV[8])
local bal = redis.call('HMGET', KEYS[1], 'nt', 'tr')
return string.format('%d', tonumber(bal[1] or '0') + tonumber(bal[2] or '0'))
