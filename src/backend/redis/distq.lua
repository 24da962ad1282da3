#!lua name=distq_1
-- distq's queues on Redis Streams: every compound step is one function, so it is atomic.
-- The library's name carries its version: a new version is a new library beside the old,
-- and clients of both can share a server while they are upgraded.
--
-- A queue is six keys under one hash tag (src/backend/redis/keys.rs):
--   1 stream   entries "0-SEQ" {d = payload}, read by the one consumer group "g"
--   2 meta     settings (cap, lease, maxr) and counters (ready, put, acked, ...)
--   3 leases   zset: id -> lease deadline (ms), the items taken and not yet settled
--   4 back     zset: id -> due (ms), the items given back (held by the consumer "~")
--   5 delayed  zset: 16 hex digits .. payload -> due (ms), delayed puts
--   6 wake     a one-entry stream a give-back writes to, to wake blocked readers
-- A lease is the pair (id, delivery count): a take after an expiry or a give-back counts
-- one more delivery, so an earlier holder's settlement no longer matches.

local G = 'g'
local PARKED = '~'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function seq_of(id)
  return tonumber(string.sub(id, 3))
end

-- The queue's settings, or an error a client maps to "unknown queue".
local function settings(meta)
  local m = redis.call('HMGET', meta, 'cap', 'lease', 'maxr')
  if not m[1] then
    return error({err = 'DISTQUNKNOWN no such queue: declare it first'})
  end
  return tonumber(m[1]), tonumber(m[2]), tonumber(m[3])
end

-- A temporary queue's keys live `ttl` ms past the last call that used the queue.
local function refresh(k)
  local ttl = tonumber(redis.call('HGET', k[2], 'ttl') or 0)
  if ttl and ttl > 0 then
    for i = 1, 6 do
      redis.call('PEXPIRE', k[i], ttl)
    end
  end
end

local function create(k, cap, lease, maxr, ttl)
  local fresh = redis.call('EXISTS', k[2]) == 0
  if fresh then
    -- MKSTREAM: the group needs the stream; BUSYGROUP (a half-made queue) is harmless.
    redis.pcall('XGROUP', 'CREATE', k[1], G, '0', 'MKSTREAM')
    redis.call('HSET', k[2], 'ready', 0, 'put', 0, 'acked', 0, 'redelivered', 0,
      'dead_lettered', 0, 'read', 0, 'dseq', 0, 'tail', '0-0', 'waketail', '0-0')
  end
  redis.call('HSET', k[2], 'cap', cap, 'lease', lease, 'maxr', maxr, 'ttl', ttl)
  refresh(k)
  return fresh
end

-- Appends one payload; returns its id.
local function append(k, payload)
  local id = redis.call('XADD', k[1], '0-*', 'd', payload)
  redis.call('HINCRBY', k[2], 'ready', 1)
  redis.call('HSET', k[2], 'tail', id)
end

-- Calls `command` on `key` with the values in `list`, in chunks (Lua's unpack is limited).
local function chunked(command, key, list)
  for i = 1, #list, 1000 do
    redis.call(command, key, unpack(list, i, math.min(i + 999, #list)))
  end
end

-- Stores payloads ARGV[from..to] (or delays them); returns how many were stored.
local function put_range(k, delay, args, from, to)
  local cap = settings(k[2])
  local n = to - from + 1
  if n <= 0 then
    return 0
  end
  if delay > 0 then
    local due = now_ms() + delay
    local seq = redis.call('HINCRBY', k[2], 'dseq', n) - n
    for i = from, to do
      seq = seq + 1
      redis.call('ZADD', k[5], due, string.format('%016x', seq) .. args[i])
    end
    redis.call('HINCRBY', k[2], 'put', n)
    return n
  end
  if cap >= 0 then
    local room = cap - tonumber(redis.call('HGET', k[2], 'ready'))
    if room < n then
      n = math.max(room, 0)
    end
  end
  local id
  for i = from, from + n - 1 do
    id = redis.call('XADD', k[1], '0-*', 'd', args[i])
  end
  if n > 0 then
    redis.call('HINCRBY', k[2], 'ready', n)
    redis.call('HINCRBY', k[2], 'put', n)
    redis.call('HSET', k[2], 'tail', id)
  end
  return n
end

-- Drops entries below the oldest one still wanted: leased, given back or unread. Whole
-- nodes only (MINID ~), so it costs little per entry, unlike XDEL.
local function trim(k)
  local first = redis.call('XPENDING', k[1], G, '-', '+', 1)[1]
  local keep = tonumber(redis.call('HGET', k[2], 'read')) + 1
  if first then
    keep = math.min(keep, seq_of(first[1]))
  end
  redis.call('XTRIM', k[1], 'MINID', '~', '0-' .. keep)
end

-- The delivery count if `consumer` holds the lease (id, count) and it has not expired.
local function held(k, consumer, id, count, now)
  local p = redis.call('XPENDING', k[1], G, id, id, 1, consumer)[1]
  if not p or p[4] % 16777216 ~= count then
    return nil
  end
  local deadline = redis.call('ZSCORE', k[3], id)
  if deadline and tonumber(deadline) > now then
    return p[4]
  end
  return nil
end

-- Settles the leases in args[from..to] (pairs of id, count); returns the ids not held.
local function settle_range(k, consumer, op, delay, args, from, to)
  local now = now_ms()
  local _, lease = settings(k[2])
  local lost = {}
  local acked = {}
  local back = false
  for i = from, to - 1, 2 do
    local id = args[i]
    local count = held(k, consumer, id, tonumber(args[i + 1]), now)
    if not count then
      lost[#lost + 1] = id
    elseif op == 'ack' then
      acked[#acked + 1] = id
    elseif op == 'touch' then
      redis.call('ZADD', k[3], now + lease, id)
    else
      -- A give-back: parked with "~" (the holder no longer matches) until it is due. An
      -- uncounted one takes back the delivery it counted.
      if op == 'free' then
        redis.call('XCLAIM', k[1], G, PARKED, 0, id, 'JUSTID', 'RETRYCOUNT', count - 1)
      else
        redis.call('XCLAIM', k[1], G, PARKED, 0, id, 'JUSTID')
      end
      redis.call('ZREM', k[3], id)
      redis.call('ZADD', k[4], now + delay, id)
      back = true
    end
  end
  if #acked > 0 then
    for i = 1, #acked, 1000 do
      redis.call('XACK', k[1], G, unpack(acked, i, math.min(i + 999, #acked)))
    end
    chunked('ZREM', k[3], acked)
    redis.call('HINCRBY', k[2], 'acked', #acked)
    trim(k)
  end
  if back then
    local id = redis.call('XADD', k[6], 'MAXLEN', 1, '*', 'w', 1)
    redis.call('HSET', k[2], 'waketail', id)
  end
  return lost
end

-- Moves delayed puts that are due into the stream.
local function promote(k, now)
  local due = redis.call('ZRANGEBYSCORE', k[5], '-inf', now, 'LIMIT', 0, 1024)
  if #due == 0 then
    return
  end
  for _, member in ipairs(due) do
    append(k, string.sub(member, 17))
  end
  redis.call('ZREMRANGEBYRANK', k[5], 0, #due - 1)
end

-- Takes up to `want` items leased to `consumer`: given-back ones that are due first, then
-- expired leases, then new items. Appends (id, count, payload) to `out`; returns how many
-- items were moved to the dead-letter queue `d` instead.
local function take(k, d, consumer, want, now, out)
  local _, lease, maxr = settings(k[2])
  local dead = 0
  promote(k, now)
  for _, zset in ipairs({k[4], k[3]}) do
    local due = {}
    if want > 0 then
      due = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, want)
    end
    for _, id in ipairs(due) do
      redis.call('ZREM', zset, id)
      local e = redis.call('XCLAIM', k[1], G, consumer, 0, id)[1]
      if e then
        local count = redis.call('XPENDING', k[1], G, id, id, 1)[1][4]
        redis.call('HINCRBY', k[2], 'redelivered', 1)
        if maxr >= 0 and count - 1 > maxr then
          append(d, e[2][2])
          redis.call('HINCRBY', d[2], 'put', 1)
          redis.call('XACK', k[1], G, id)
          redis.call('HINCRBY', k[2], 'dead_lettered', 1)
          dead = dead + 1
        else
          redis.call('ZADD', k[3], now + lease, id)
          out[#out + 1] = id
          out[#out + 1] = count
          out[#out + 1] = e[2][2]
          want = want - 1
        end
      end
    end
  end
  if dead > 0 then
    trim(k)
  end
  if want > 0 then
    local r = redis.call('XREADGROUP', 'GROUP', G, consumer, 'COUNT', want, 'STREAMS', k[1], '>')
    if r then
      local entries = r[1][2]
      local z = {}
      for _, e in ipairs(entries) do
        z[#z + 1] = now + lease
        z[#z + 1] = e[1]
        out[#out + 1] = e[1]
        out[#out + 1] = 1
        out[#out + 1] = e[2][2]
      end
      chunked('ZADD', k[3], z)
      redis.call('HINCRBY', k[2], 'ready', -#entries)
      redis.call('HSET', k[2], 'read', seq_of(entries[#entries][1]))
    end
  end
  return dead
end

-- The earliest due time or lease deadline after now, or -1.
local function next_due(k)
  local best = -1
  for _, zset in ipairs({k[3], k[4], k[5]}) do
    local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')[2]
    if first and (best < 0 or tonumber(first) < best) then
      best = tonumber(first)
    end
  end
  return best
end

-- The reply of a take: {1, dead, lease ms, id, count, payload, ...} with items, or
-- {0, dead, stream tail, wake tail, ms until something is due or -1} without.
local function take_reply(k, d, consumer, max, now)
  local _, lease = settings(k[2])
  local out = {1, 0, lease}
  local dead = take(k, d, consumer, max, now, out)
  out[2] = dead
  if #out > 3 then
    return out
  end
  local tails = redis.call('HMGET', k[2], 'tail', 'waketail')
  local due = next_due(k)
  if due >= 0 then
    due = math.max(due - now, 0)
  end
  return {0, dead, tails[1], tails[2], due}
end

local function queue_keys(keys, at)
  return {keys[at], keys[at + 1], keys[at + 2], keys[at + 3], keys[at + 4], keys[at + 5]}
end

-- KEYS: queue, its dead-letter queue. ARGV: cap (-1: none), lease ms, max redeliveries,
-- ttl ms (0: a lasting queue; else a temporary one, without a dead-letter queue).
-- Creates the queue or updates its settings; returns 1 if it is new.
redis.register_function('distq_1_declare', function(keys, args)
  local k, d = queue_keys(keys, 1), queue_keys(keys, 7)
  local ttl = tonumber(args[4])
  local maxr = tonumber(args[3])
  if ttl > 0 then
    maxr = -1
  end
  local fresh = create(k, tonumber(args[1]), tonumber(args[2]), maxr, ttl)
  if ttl == 0 then
    create(d, -1, tonumber(args[2]), -1, 0)
  end
  return fresh and 1 or 0
end)

-- KEYS: queue. ARGV: delay ms (0: none), payloads. Returns how many were stored.
redis.register_function('distq_1_put', function(keys, args)
  local stored = put_range(keys, tonumber(args[1]), args, 2, #args)
  refresh(keys)
  return stored
end)

-- KEYS: queue, dead-letter queue. ARGV: consumer, max, n, then n (id, count) pairs to
-- acknowledge first. Returns a take reply.
redis.register_function('distq_1_take', function(keys, args)
  local k, d = queue_keys(keys, 1), queue_keys(keys, 7)
  local n = tonumber(args[3])
  settle_range(k, args[1], 'ack', 0, args, 4, 3 + 2 * n)
  local reply = take_reply(k, d, args[1], tonumber(args[2]), now_ms())
  refresh(k)
  return reply
end)

-- The fused worker cycle. KEYS: results queue, queue, dead-letter queue. ARGV: consumer,
-- max, n, n (id, count) pairs, then the results. Stores the results; if they all fit,
-- acknowledges the pairs and takes. Returns a take reply, or {2, stored} when the results
-- did not all fit (nothing acknowledged or taken).
redis.register_function('distq_1_cycle', function(keys, args)
  local r, k, d = queue_keys(keys, 1), queue_keys(keys, 7), queue_keys(keys, 13)
  local n = tonumber(args[3])
  local first = 4 + 2 * n
  local stored = put_range(r, 0, args, first, #args)
  refresh(r)
  if stored < #args - first + 1 then
    return {2, stored}
  end
  settle_range(k, args[1], 'ack', 0, args, 4, 3 + 2 * n)
  local reply = take_reply(k, d, args[1], tonumber(args[2]), now_ms())
  refresh(k)
  return reply
end)

-- KEYS: queue. ARGV: consumer, op (ack, nack, free, touch), delay ms, (id, count) pairs.
-- Returns the ids whose lease the consumer did not hold.
redis.register_function('distq_1_settle', function(keys, args)
  local lost = settle_range(keys, args[1], args[2], tonumber(args[3]), args, 4, #args)
  refresh(keys)
  return lost
end)

-- KEYS: queue. Returns {waiting, cap (-1: none), lease ms}.
redis.register_function('distq_1_len', function(keys)
  local cap, lease = settings(keys[2])
  local now = now_ms()
  local ready = tonumber(redis.call('HGET', keys[2], 'ready'))
  local due = redis.call('ZCOUNT', keys[3], '-inf', now) + redis.call('ZCOUNT', keys[4], '-inf', now)
  refresh(keys)
  return {ready + due, cap, lease}
end)

-- KEYS: queue, dead-letter queue. Returns {waiting, leased, delayed, cap, put, acked,
-- redelivered, dead_lettered, dead waiting, temporary (1 or 0)}.
redis.register_function{function_name = 'distq_1_stats', flags = {'no-writes'},
  callback = function(keys)
    local k, d = queue_keys(keys, 1), queue_keys(keys, 7)
    local cap = settings(k[2])
    local now = now_ms()
    local m = redis.call('HMGET', k[2], 'ready', 'put', 'acked', 'redelivered', 'dead_lettered')
    local expired = redis.call('ZCOUNT', k[3], '-inf', now)
    local back_due = redis.call('ZCOUNT', k[4], '-inf', now)
    local leased = redis.call('ZCARD', k[3]) - expired
    local delayed = redis.call('ZCARD', k[5]) + redis.call('ZCARD', k[4]) - back_due
    local dead = tonumber(redis.call('HGET', d[2], 'ready') or 0)
    local temporary = tonumber(redis.call('HGET', k[2], 'ttl') or 0) > 0 and 1 or 0
    return {tonumber(m[1]) + expired + back_due, leased, delayed, cap, tonumber(m[2]),
      tonumber(m[3]), tonumber(m[4]), tonumber(m[5]), dead, temporary}
  end}

-- KEYS: queue. ARGV: consumer, and "drop" for a temporary queue this consumer declared.
-- Removes the consumer from the group if it holds nothing, and any other consumer idle for
-- a day that holds nothing (a worker that died). A temporary queue left empty, with nothing
-- leased or delayed, is removed (returns -1).
redis.register_function('distq_1_leave', function(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then
    return 0
  end
  if args[2] == 'drop' and tonumber(redis.call('HGET', keys[2], 'ttl') or 0) > 0
      and tonumber(redis.call('HGET', keys[2], 'ready')) == 0
      and redis.call('ZCARD', keys[3]) + redis.call('ZCARD', keys[4]) + redis.call('ZCARD', keys[5]) == 0 then
    redis.call('DEL', keys[1], keys[2], keys[3], keys[4], keys[5], keys[6])
    return -1
  end
  local removed = 0
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', keys[1], G)) do
    local name, pending, idle = c[2], c[4], c[6]
    if pending == 0 and name ~= PARKED and (name == args[1] or idle > 86400000) then
      redis.call('XGROUP', 'DELCONSUMER', keys[1], G, name)
      removed = removed + 1
    end
  end
  return removed
end)
