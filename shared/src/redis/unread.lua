-- Prepended to reconcile.lua and expire.lua (see projection.rs and stream.rs): reading the
-- usage entries a consumer group has not been delivered yet, bounded.

-- The entries of `stream` after `group`'s last delivered id, oldest first: at most `most`,
-- or nil when there are more (the caller then acts without reading them).
local function unread_entries(stream, group, most)
  local last = '0-0'
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if type(groups) == 'table' and not groups.err then
    for _, g in ipairs(groups) do
      local name, id
      for i = 1, #g, 2 do
        if g[i] == 'name' then name = g[i + 1] end
        if g[i] == 'last-delivered-id' then id = g[i + 1] end
      end
      if name == group and id then last = id end
    end
  end
  local entries = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', most + 1)
  if #entries > most then
    return nil
  end
  return entries
end

-- An entry's fields as a table.
local function entry_fields(entry)
  local f = {}
  local kv = entry[2]
  for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
  return f
end
