-- Admission: check the balance covers the cost, debit it, record the usage event.
-- Atomic (one script), one round trip. Non-transferable credits are spent first.
-- KEYS[1] account hash, KEYS[2] usage stream
-- ARGV[1] cost (millicredits), ARGV[2] customer, ARGV[3] route, ARGV[4] request id, ARGV[5] time (ms)
-- Returns {1, remaining, from_nt, from_tr} admitted, {0, balance} insufficient, {-1} no account.
local bal = redis.call('HMGET', KEYS[1], 'nt', 'tr')
if not bal[1] and not bal[2] then
  return {-1}
end
local nt = tonumber(bal[1] or '0')
local tr = tonumber(bal[2] or '0')
local cost = tonumber(ARGV[1])
if nt + tr < cost then
  return {0, string.format('%d', nt + tr)}
end
local from_nt = math.min(math.max(nt, 0), cost)
local from_tr = cost - from_nt
if from_nt > 0 then redis.call('HINCRBY', KEYS[1], 'nt', string.format('%d', -from_nt)) end
if from_tr > 0 then redis.call('HINCRBY', KEYS[1], 'tr', string.format('%d', -from_tr)) end
redis.call('XADD', KEYS[2], '*',
  'kind', 'debit', 'customer', ARGV[2], 'route', ARGV[3], 'request_id', ARGV[4],
  'cost', string.format('%d', cost), 'nt', string.format('%d', from_nt),
  'tr', string.format('%d', from_tr), 'ts_ms', ARGV[5])
return {1, string.format('%d', nt + tr - cost), string.format('%d', from_nt), string.format('%d', from_tr)}
