-- Take credits from one balance field of an account, atomically with the proxy's debits.
-- Used by billing-sync for transfers (mode "all": all or nothing, never below zero) and
-- expiries (mode "upto": as much as is there, up to the amount).
-- KEYS[1] account hash
-- ARGV[1] field ('nt' or 'tr'), ARGV[2] amount (millicredits), ARGV[3] mode ('all' | 'upto')
-- Returns {1, taken} done, {0, balance of the field} insufficient (mode all), {-1} no account.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local amount = tonumber(ARGV[2])
local take = amount
if ARGV[3] == 'all' then
  if cur < amount then
    return {0, string.format('%d', cur)}
  end
else
  take = math.min(amount, math.max(cur, 0))
end
if take > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], string.format('%d', -take))
end
return {1, string.format('%d', take)}
