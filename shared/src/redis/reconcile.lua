-- Compare (and repair or set) an account against the ledger, accounting for usage entries
-- the consumer group has not read yet. Atomic with the proxy's debits. Bounded: reads at
-- most ARGV[7] unread entries; with more unread (the consumer is behind) it changes
-- nothing and says so, since the account cannot be judged until the consumer catches up.
-- KEYS[1] account hash, KEYS[2] the customer's usage stream
-- ARGV[1] consumer group, ARGV[2] customer, ARGV[3] plan, ARGV[4] ledger nt, ARGV[5] ledger tr,
-- ARGV[6] mode: 'set' (always write) or 'repair' (write only on drift), ARGV[7] most unread
-- entries to read
-- Returns {existed (0/1), current nt, current tr, expected nt, expected tr, written (0/1)},
-- or {-2} when more than ARGV[7] entries are unread (nothing changed).
local entries = unread_entries(KEYS[2], ARGV[1], tonumber(ARGV[7]))
if not entries then
  return {-2}
end
local pend_nt, pend_tr = 0, 0
for _, e in ipairs(entries) do
  local f = entry_fields(e)
  if f['customer'] == ARGV[2] then
    if f['kind'] == 'debit' or f['kind'] == 'refund' then
      local sign = -1
      if f['kind'] == 'refund' then sign = 1 end
      pend_nt = pend_nt + sign * tonumber(f['nt'] or '0')
      pend_tr = pend_tr + sign * tonumber(f['tr'] or '0')
    elseif f['kind'] == 'expire' then
      if f['field'] == 'tr' then
        pend_tr = pend_tr - tonumber(f['taken'] or '0')
      else
        pend_nt = pend_nt - tonumber(f['taken'] or '0')
      end
    end
  end
end
local exp_nt = tonumber(ARGV[4]) + pend_nt
local exp_tr = tonumber(ARGV[5]) + pend_tr
local existed = redis.call('EXISTS', KEYS[1])
local bal = redis.call('HMGET', KEYS[1], 'nt', 'tr', 'plan')
local cur_nt = tonumber(bal[1] or '0')
local cur_tr = tonumber(bal[2] or '0')
local written = 0
if ARGV[6] == 'set' or existed == 0 or cur_nt ~= exp_nt or cur_tr ~= exp_tr or bal[3] ~= ARGV[3] then
  redis.call('HSET', KEYS[1], 'plan', ARGV[3], 'nt', string.format('%d', exp_nt),
    'tr', string.format('%d', exp_tr))
  written = 1
end
return {existed, string.format('%d', cur_nt), string.format('%d', cur_tr),
  string.format('%d', exp_nt), string.format('%d', exp_tr), written}
