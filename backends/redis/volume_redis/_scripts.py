"""Lua scripts that work on every slice reference inside the server, so no record crosses the
socket one command at a time.

JuiceFS writes no ``sliceRef`` field for a slice referenced once (a field holds refs - 1), so a
slice that chunk records name without a field has one reference. :data:`NAMED_WITHOUT_REF`
finds those: it walks the chunk lists ``c{inode}_{indx}`` and builds the field ``k{id}_{size}``
of each 24-byte record naming a slice (id > 0). Slice ids are 64-bit and Lua numbers are
doubles, so an id is read as two 32-bit halves and printed exactly (``u64``).

:data:`PIN` applies the pins of :mod:`volume.pins` in one pass: every ``k{id}_{size}`` field
whose count (value + 1) is below the pin gets the pin added, and each slice named without a
field (``ARGV[3...]``, or found by the same walk when ``ARGV[2]`` is ``scan``) is written as a
pinned single reference (value = pin). It returns how many counts it pinned.
"""

from __future__ import annotations

_EACH_NAMED = """
local function u64(hi, lo)
  local digits = ''
  while hi >= 2097152 do  -- 2^53 and above: split off six decimal digits at a time
    local r = hi % 1000000
    hi = (hi - r) / 1000000
    local cur = r * 4294967296 + lo
    local d = cur % 1000000
    lo = (cur - d) / 1000000
    digits = string.format('%06d', d) .. digits
  end
  return string.format('%.0f', hi * 4294967296 + lo) .. digits
end

local function each_named(visit)
  for _, key in ipairs(redis.call('KEYS', 'c[0-9]*')) do
    if string.match(key, '^c%d+_%d+$') then
      for _, rec in ipairs(redis.call('LRANGE', key, 0, -1)) do
        if #rec == 24 then
          local hi, lo, size = struct.unpack('>I4I4I4', rec, 5)
          if hi ~= 0 or lo ~= 0 then
            visit('k' .. u64(hi, lo) .. '_' .. string.format('%.0f', size))
          end
        end
      end
    end
  end
end
"""

NAMED_WITHOUT_REF = (
    _EACH_NAMED
    + """
local have = {}
local all = redis.call('HKEYS', KEYS[1])
for i = 1, #all do have[all[i]] = true end
local out = {}
each_named(function(field)
  if not have[field] then
    have[field] = true
    out[#out + 1] = field
  end
end)
return out
"""
)

PIN = (
    _EACH_NAMED
    + """
local ref, pin = KEYS[1], tonumber(ARGV[1])
local have, batch, pinned = {}, {}, 0
local function put(field, value)
  batch[#batch + 1] = field
  batch[#batch + 1] = value
  pinned = pinned + 1
  if #batch >= 2000 then
    redis.call('HSET', ref, unpack(batch))
    batch = {}
  end
end
local all = redis.call('HGETALL', ref)
for i = 1, #all, 2 do
  local field, value = all[i], tonumber(all[i + 1])
  have[field] = true
  if value and value + 1 < pin and string.match(field, '^k%d+_%d+$') then
    put(field, string.format('%.0f', value + pin))
  end
end
local function named(field)
  if not have[field] then
    have[field] = true
    put(field, ARGV[1])
  end
end
if ARGV[2] == 'scan' then
  each_named(named)
else
  for i = 3, #ARGV do named(ARGV[i]) end
end
if #batch > 0 then redis.call('HSET', ref, unpack(batch)) end
return pinned
"""
)
