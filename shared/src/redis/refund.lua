-- Refund of a debited request whose upstream failed, or whose admission the proxy gave up
-- on: give back exactly what was taken, record a refund event, at most once per request id.
-- KEYS[1] account hash, KEYS[2] usage stream, KEYS[3] refund marker, KEYS[4] admission marker
-- ARGV[1] from_nt, ARGV[2] from_tr (both '' to refund by request id: what the admission
-- marker says was taken, if anything), ARGV[3] customer, ARGV[4] route, ARGV[5] request id,
-- ARGV[6] time (ms), ARGV[7] refund marker ttl (s), ARGV[8] reason, ARGV[9] admission marker ttl (s)
-- Returns the balance after the refund, -1 if this request was already refunded, or -2 if
-- it was never admitted: by request id with no admission marker, the marker is then set
-- to `void` so an admission still in flight refuses instead of debiting.
local from_nt, from_tr = ARGV[1], ARGV[2]
if from_nt == '' then
  local admitted = redis.call('GET', KEYS[4])
  if not admitted then
    redis.call('SET', KEYS[4], 'void', 'EX', ARGV[9])
    return -2
  end
  if admitted == 'void' then
    return -2
  end
  from_nt, from_tr = string.match(admitted, '^(%-?%d+):(%-?%d+)$')
  if not from_nt then
    return redis.error_reply('admission marker ' .. KEYS[4] .. ' is malformed')
  end
end
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[7]) then
  return -1
end
local nt = tonumber(from_nt)
local tr = tonumber(from_tr)
-- While billing-sync rebuilds a lost account, the event alone carries the refund.
if redis.call('EXISTS', KEYS[1]) == 1 then
  if nt > 0 then redis.call('HINCRBY', KEYS[1], 'nt', from_nt) end
  if tr > 0 then redis.call('HINCRBY', KEYS[1], 'tr', from_tr) end
end
redis.call('XADD', KEYS[2], '*',
  'kind', 'refund', 'customer', ARGV[3], 'route', ARGV[4], 'request_id', ARGV[5],
  'cost', string.format('%d', nt + tr), 'nt', from_nt, 'tr', from_tr, 'ts_ms', ARGV[6],
  'reason', ARGV[8])
local bal = redis.call('HMGET', KEYS[1], 'nt', 'tr')
return string.format('%d', tonumber(bal[1] or '0') + tonumber(bal[2] or '0'))
