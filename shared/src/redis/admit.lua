-- Admission: check the balance covers the cost, debit it, record the usage event.
-- Atomic (one script), one round trip. Non-transferable credits are spent first.
-- Idempotent per request id: the admission marker keeps what was taken, so a retry (the
-- first answer was lost) returns the first outcome and debits nothing twice; a marker
-- `void` means the proxy gave this request up (and refunded it by request id), so a late
-- admission refuses.
-- KEYS[1] account hash, KEYS[2] usage stream, KEYS[3] admission marker
-- ARGV[1] cost (millicredits), ARGV[2] customer, ARGV[3] route, ARGV[4] request id, ARGV[5] time (ms),
-- ARGV[6] admission marker ttl (s)
-- Returns {1, remaining, from_nt, from_tr} admitted (now or by an earlier try),
-- {0, balance} insufficient, {-1} no account, {-2} given up.
local prior = redis.call('GET', KEYS[3])
if prior then
  if prior == 'void' then
    return {-2}
  end
  local prior_nt, prior_tr = string.match(prior, '^(%-?%d+):(%-?%d+)$')
  if not prior_nt then
    return redis.error_reply('admission marker ' .. KEYS[3] .. ' is malformed')
  end
  local now = redis.call('HMGET', KEYS[1], 'nt', 'tr')
  return {1, string.format('%d', tonumber(now[1] or '0') + tonumber(now[2] or '0')), prior_nt, prior_tr}
end
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
redis.call('SET', KEYS[3], string.format('%d:%d', from_nt, from_tr), 'EX', ARGV[6])
return {1, string.format('%d', nt + tr - cost), string.format('%d', from_nt), string.format('%d', from_tr)}
