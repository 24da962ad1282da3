#!lua name=distq_1
-- distq's queues on Redis Streams: every compound step is one function, so it is atomic.
-- The library's name carries its version: a new version is a new library beside the old,
-- and clients of both can share a server while they are upgraded.
--
-- A queue is six keys under one hash tag (src/backend/redis/keys.rs):
--   1 stream   entries "0-SEQ" {d = payload}, read by the one consumer group "g"
--   2 meta     settings (cap, lease, maxr, ttl) and counters (ready, put, acked, ...)
--   3 holders  zset: consumer -> the earliest a lease it holds may expire (ms), a bound
--              that is never late: the expiry of leases is looked for only there
--   4 back     zset: "ID/COUNT" -> due (ms), items given back, to be taken again
--   5 delayed  zset: 16 hex digits .. payload -> due (ms), delayed puts
--   6 wake     a one-entry stream a give-back writes to, to wake blocked readers
-- Leases are the group's pending list: an item taken is pending for its taker, with the
-- delivery count and the time since it was delivered (or touched: XCLAIM resets it). A
-- lease is (id, delivery count) held by one consumer, valid while that time is under the
-- lease timeout; a take after an expiry or a give-back is one more delivery, so an earlier
-- holder's settlement no longer matches. Items given back are pending for "~" until taken
-- again. Entries stay pending until acknowledged, so the oldest pending one says how far
-- the stream may be trimmed. Nothing is kept per item beyond what the stream keeps.

local G = 'g'
local PARKED = '~'
-- The most pending entries of one consumer looked at to place its next expiry.
local SCAN = 10000
local FIELDS = {'cap', 'lease', 'maxr', 'ttl', 'ready', 'read', 'put', 'acked',
  'redelivered', 'dead_lettered', 'delayed', 'back', 'tail', 'waketail', 'dseq', 'maxlen',
  'tfloor', 'xdel'}
-- Trim the stream once per this many acknowledgements (whole nodes go at a time anyway).
local TRIM_EVERY = 256

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function seq_of(id)
  return tonumber(string.sub(id, 3))
end

-- The id of entry `seq` (written out in full: Lua's '..' would say 1e+14).
local function id_of(seq)
  return string.format('0-%d', seq)
end

-- The queue's settings and counters, or an error a client maps to "unknown queue". The
-- caller changes the table and saves the fields it changed with `save`.
local function load(k)
  local v = redis.call('HMGET', k[2], unpack(FIELDS))
  if not v[1] then
    return error({err = 'DISTQUNKNOWN no such queue: declare it first'})
  end
  local m = {k = k, dirty = {}}
  for i, f in ipairs(FIELDS) do
    m[f] = tonumber(v[i]) or v[i] or 0
  end
  return m
end

local function set(m, field, value)
  m[field] = value
  m.dirty[field] = true
end

local function add(m, field, n)
  if n ~= 0 then
    set(m, field, m[field] + n)
  end
end

-- Writes the changed fields; a temporary queue's keys then live `ttl` ms longer.
local function save(m)
  local out = {}
  for f in pairs(m.dirty) do
    out[#out + 1] = f
    out[#out + 1] = m[f]
  end
  if #out > 0 then
    redis.call('HSET', m.k[2], unpack(out))
    m.dirty = {}
  end
  if m.ttl > 0 then
    for i = 1, 6 do
      redis.call('PEXPIRE', m.k[i], m.ttl)
    end
  end
end

-- Calls `command` on `key` with the values in `list`, in chunks (Lua's unpack is limited).
local function chunked(command, key, list)
  for i = 1, #list, 1000 do
    redis.call(command, key, unpack(list, i, math.min(i + 999, #list)))
  end
end

local function create(k, cap, lease, maxr, ttl)
  local fresh = redis.call('EXISTS', k[2]) == 0
  if not fresh then
    local old = redis.call('HMGET', k[2], 'ttl', 'lease')
    if (tonumber(old[1] or 0) > 0) ~= (ttl > 0) then
      return error({err = 'DISTQCONFLICT a temporary queue and a lasting one cannot share a name'})
    end
    if tonumber(old[2] or 0) > lease then
      -- A shorter lease: every holder's bound may now be late; each is looked at again.
      redis.call('ZUNIONSTORE', k[3], 1, k[3], 'WEIGHTS', 0)
    end
  end
  if fresh then
    -- MKSTREAM: the group needs the stream; BUSYGROUP (a half-made queue) is harmless.
    redis.pcall('XGROUP', 'CREATE', k[1], G, '0', 'MKSTREAM')
    redis.call('HSET', k[2], 'ready', 0, 'read', 0, 'put', 0, 'acked', 0, 'redelivered', 0,
      'dead_lettered', 0, 'delayed', 0, 'back', 0, 'tail', '0-0', 'waketail', '0-0', 'dseq', 0)
  end
  redis.call('HSET', k[2], 'cap', cap, 'lease', lease, 'maxr', maxr, 'ttl', ttl)
  save(load(k))
  return fresh
end

-- Appends payloads args[from..to]; returns the last id.
local function append(m, args, from, to)
  local id
  for i = from, to do
    id = redis.call('XADD', m.k[1], '0-*', 'd', args[i])
  end
  add(m, 'ready', to - from + 1)
  set(m, 'tail', id)
end

-- Wakes readers blocked on the queue (the new item is not in the stream).
local function wake(m)
  local id = redis.call('XADD', m.k[6], 'MAXLEN', 1, '*', 'w', 1)
  set(m, 'waketail', id)
end

-- Stores payloads args[from..to] (or delays them); returns how many were stored.
local function put_range(m, delay, args, from, to)
  local n = to - from + 1
  if n <= 0 then
    return 0
  end
  if delay > 0 then
    local due = now_ms() + delay
    for i = from, to do
      add(m, 'dseq', 1)
      redis.call('ZADD', m.k[5], due, string.format('%016x', m.dseq) .. args[i])
      set(m, 'maxlen', math.max(m.maxlen, #args[i]))
    end
    add(m, 'delayed', n)
    add(m, 'put', n)
    -- A reader blocked until something was due must look again.
    wake(m)
    return n
  end
  if m.cap >= 0 and m.cap - m.ready < n then
    n = math.max(m.cap - m.ready, 0)
  end
  if n > 0 then
    local longest = m.maxlen
    for i = from, from + n - 1 do
      longest = math.max(longest, #args[i])
    end
    set(m, 'maxlen', longest)
    append(m, args, from, from + n - 1)
    add(m, 'put', n)
  end
  return n
end

-- Drops entries below the oldest one still wanted: pending or unread. Whole nodes only
-- (MINID ~), so it costs little per entry, unlike XDEL.
local function trim(m)
  local first = redis.call('XPENDING', m.k[1], G, '-', '+', 1)[1]
  local keep = m.read + 1
  if first then
    keep = math.min(keep, seq_of(first[1]))
  end
  redis.call('XTRIM', m.k[1], 'MINID', '~', id_of(keep))
  -- One lease held for long (a task running for hours, a give-back delayed for a day) pins
  -- every entry after it: past a margin, acknowledged entries are deleted one by one too.
  local pending = redis.call('XPENDING', m.k[1], G)[1]
  local excess = redis.call('XLEN', m.k[1]) > 2 * (pending + m.ready) + 100000
  set(m, 'xdel', excess and 1 or 0)
end

-- The delivery counts of the leases in args[from..to] (pairs of id, count) that
-- `consumer` holds, by id: pending for it, with that count, not expired.
local function held(m, consumer, args, from, to, now)
  local lo, hi
  for i = from, to - 1, 2 do
    local seq = seq_of(args[i])
    lo = (lo and math.min(lo, seq)) or seq
    hi = (hi and math.max(hi, seq)) or seq
  end
  local out = {}
  if not lo then
    return out
  end
  local n = (to - from + 1) / 2
  -- One look at the consumer's pending entries over the ids' range; only if other
  -- entries of its crowd that range, one look per id.
  local limit = n + 64
  local pending = redis.call('XPENDING', m.k[1], G, id_of(lo), id_of(hi), limit, consumer)
  local by_id = {}
  for _, p in ipairs(pending) do
    by_id[p[1]] = p
  end
  for i = from, to - 1, 2 do
    local id, count = args[i], tonumber(args[i + 1])
    local p = by_id[id]
    if not p and #pending == limit then
      p = redis.call('XPENDING', m.k[1], G, id, id, 1, consumer)[1]
    end
    if p and p[4] % 256 == count and p[3] < m.lease then
      out[id] = p[4]
    end
  end
  return out
end

-- Acknowledges entries `ids` (leases checked already): XACK, counted by what it did, and
-- now and then a trim.
local function acknowledge(m, ids)
  local acked = 0
  for i = 1, #ids, 1000 do
    local part = {unpack(ids, i, math.min(i + 999, #ids))}
    acked = acked + redis.call('XACK', m.k[1], G, unpack(part))
    if m.xdel == 1 then
      redis.call('XDEL', m.k[1], unpack(part))
    end
  end
  local before = m.acked
  add(m, 'acked', acked)
  if math.floor(m.acked / TRIM_EVERY) ~= math.floor(before / TRIM_EVERY) then
    trim(m)
  end
end

-- Acknowledges the leases in args[from..to], taken at `taken` (ms, the server's clock),
-- without looking at each when none can have expired: no lease of `consumer` has expired
-- since (none was claimed from it after `taken`: its mark "t:CONSUMER" in the record is
-- older) and none can have yet (its holder bound is ahead). Each is then still its own,
-- unless it settled it already (XACK skips those). Returns false when it cannot tell.
local function ack_fast(m, consumer, taken, args, from, to, now)
  -- Acknowledged entries are deleted too just now: only checked ones may be.
  if m.xdel == 1 then
    return false
  end
  local bound = redis.call('ZSCORE', m.k[3], consumer)
  if not bound or tonumber(bound) <= now then
    return false
  end
  local mark = tonumber(redis.call('HGET', m.k[2], 't:' .. consumer) or -1)
  if not taken or mark >= taken or m.tfloor >= taken then
    return false
  end
  local ids = {}
  for i = from, to - 1, 2 do
    ids[#ids + 1] = args[i]
  end
  acknowledge(m, ids)
  return true
end

-- Settles the leases in args[from..to] (pairs of id, count); returns the ids not held
-- (never taken by `consumer`, taken by another since, or expired).
local function settle_range(m, consumer, op, delay, taken, args, from, to)
  local now = now_ms()
  if to < from then
    return {}
  end
  if op == 'ack' and ack_fast(m, consumer, taken, args, from, to, now) then
    return {}
  end
  local counts = held(m, consumer, args, from, to, now)
  local ids, held_counts, lost = {}, {}, {}
  for i = from, to - 1, 2 do
    local count = counts[args[i]]
    if count then
      ids[#ids + 1] = args[i]
      held_counts[#ids] = count
      counts[args[i]] = nil -- an id asked twice counts once
    else
      lost[#lost + 1] = args[i]
    end
  end
  if #ids == 0 then
    return lost
  end
  if op == 'ack' then
    acknowledge(m, ids)
    return lost
  end
  if op == 'touch' then
    -- XCLAIM to the holder itself restarts the time since delivery; JUSTID keeps the count.
    for i = 1, #ids, 1000 do
      local call = {'XCLAIM', m.k[1], G, consumer, 0}
      for j = i, math.min(i + 999, #ids) do
        call[#call + 1] = ids[j]
      end
      call[#call + 1] = 'JUSTID'
      redis.call(unpack(call))
    end
    return lost
  end
  -- A give-back: pending for "~" (its holder no longer matches) until due after `delay`.
  -- An uncounted one takes back the delivery its holder counted.
  local z = {}
  for i, id in ipairs(ids) do
    local count = held_counts[i]
    if op == 'free' then
      count = count - 1
    end
    redis.call('XCLAIM', m.k[1], G, PARKED, 0, id, 'JUSTID', 'RETRYCOUNT', count)
    z[#z + 1] = now + delay
    z[#z + 1] = id .. '/' .. count
  end
  chunked('ZADD', m.k[4], z)
  add(m, 'back', #ids)
  -- Its leases taken until now are checked one by one: an acknowledgement of one it gave
  -- back (a retry after a lost reply) must not reach the parked entry.
  redis.call('HSET', m.k[2], 't:' .. consumer, now)
  wake(m)
  return lost
end

-- Moves delayed puts that are due into the stream.
local function promote(m, now)
  if m.delayed == 0 then
    return
  end
  local due = redis.call('ZRANGEBYSCORE', m.k[5], '-inf', now, 'LIMIT', 0, 1024)
  if #due == 0 then
    return
  end
  local payloads = {}
  for i, member in ipairs(due) do
    payloads[i] = string.sub(member, 17)
  end
  append(m, payloads, 1, #payloads)
  redis.call('ZREMRANGEBYRANK', m.k[5], 0, #due - 1)
  add(m, 'delayed', -#due)
end

-- Claims entry `id` for `consumer` as delivery `count` if it has been pending for at least
-- `min_idle` ms; returns its payload, or nil (an item moved to the dead-letter queue,
-- touched since, or gone). Appends (id, count, payload) to `out` when it is taken.
local function claim(m, dead_q, consumer, id, count, min_idle, out)
  local e = redis.call('XCLAIM', m.k[1], G, consumer, min_idle, id, 'RETRYCOUNT', count)[1]
  if not e then
    return false
  end
  add(m, 'redelivered', 1)
  if m.maxr >= 0 and count - 1 > m.maxr then
    append(dead_q.m, e[2], 2, 2)
    add(dead_q.m, 'put', 1)
    set(dead_q.m, 'maxlen', math.max(dead_q.m.maxlen, #e[2][2]))
    redis.call('XACK', m.k[1], G, id)
    add(m, 'dead_lettered', 1)
    dead_q.moved = (dead_q.moved or 0) + 1
    return false
  end
  out[#out + 1] = id
  out[#out + 1] = count
  out[#out + 1] = e[2][2]
  return true
end

-- Places `holder`'s next possible expiry after a look at its pending entries found none
-- expired (or forgets it, holding nothing).
local function replace_holder(m, holder, now)
  local pending = redis.call('XPENDING', m.k[1], G, '-', '+', SCAN, holder)
  if #pending == 0 then
    redis.call('ZREM', m.k[3], holder)
    return
  end
  local oldest = 0
  for _, p in ipairs(pending) do
    oldest = math.max(oldest, p[3])
  end
  local next = now + math.max(m.lease - oldest, 1)
  if #pending == SCAN then
    -- Not all seen: look again soon.
    next = math.min(next, now + math.max(math.floor(m.lease / 4), 1))
  end
  redis.call('ZADD', m.k[3], next, holder)
end

-- Takes up to `want` items leased to `consumer`: given-back ones that are due first, then
-- expired leases, then new items. Appends (id, count, payload) of the items taken again to
-- `out`; moves those past the redelivery limit to the dead-letter queue (`dead_q.keys`,
-- loaded into `dead_q.m` when first needed, counted in `dead_q.moved`) instead. Returns
-- the new entries as XREADGROUP gave them (each {id, {"d", payload}}, a first delivery).
local function take(m, dead_q, consumer, want, now, out)
  promote(m, now)
  if want > 0 and m.back > 0 then
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', m.k[4], '-inf', now, 'LIMIT', 0, want)) do
      redis.call('ZREM', m.k[4], member)
      add(m, 'back', -1)
      local id, count = string.match(member, '^([^/]+)/(%d+)')
      if claim(m, dead_q, consumer, id, tonumber(count) + 1, 0, out) then
        want = want - 1
      end
    end
  end
  if want > 0 then
    for _, holder in ipairs(redis.call('ZRANGEBYSCORE', m.k[3], '-inf', now, 'LIMIT', 0, 8)) do
      if want <= 0 then
        break
      end
      local asked = want
      local expired = redis.call('XPENDING', m.k[1], G, 'IDLE', m.lease, '-', '+', asked, holder)
      if #expired > 0 then
        -- Its leases taken until now may have expired: it acknowledges them one by one.
        redis.call('HSET', m.k[2], 't:' .. holder, now)
      end
      for _, p in ipairs(expired) do
        if claim(m, dead_q, consumer, p[1], p[4] + 1, m.lease, out) then
          want = want - 1
        end
      end
      -- Fewer than asked: none of its leases is expired any more.
      if #expired < asked then
        replace_holder(m, holder, now)
      end
    end
  end
  if (dead_q.moved or 0) > 0 then
    trim(m)
  end
  local fresh = {}
  if want > 0 and m.ready > 0 then
    local r = redis.call('XREADGROUP', 'GROUP', G, consumer, 'COUNT', want, 'STREAMS', m.k[1], '>')
    if r then
      fresh = r[1][2]
      add(m, 'ready', -#fresh)
      set(m, 'read', seq_of(fresh[#fresh][1]))
    end
  end
  if #fresh > 0 or #out > 0 then
    -- The new leases expire a lease from now, no sooner than any this consumer holds.
    redis.call('ZADD', m.k[3], 'NX', now + m.lease, consumer)
  end
  return fresh
end

-- The earliest due time or lease deadline, or -1.
local function next_due(m)
  local best = -1
  for _, zset in ipairs({m.k[3], m.k[4], m.k[5]}) do
    local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')[2]
    if first and (best < 0 or tonumber(first) < best) then
      best = tonumber(first)
    end
  end
  return best
end

-- The reply of a take: {1, dead, lease ms, when (ms), {id, count, payload, ...} of items
-- taken again, new entries} with items, or {0, dead, stream tail, wake tail, ms until
-- something is due or -1} without.
local function take_reply(m, dead_q, consumer, max, now)
  local again = {}
  local fresh = take(m, dead_q, consumer, max, now, again)
  local dead = dead_q.moved or 0
  if #again > 0 or #fresh > 0 then
    return {1, dead, m.lease, now, again, fresh}
  end
  local due = next_due(m)
  if due >= 0 then
    due = math.max(due - now, 0)
  end
  return {0, dead, m.tail, m.waketail, due}
end

local function queue_keys(keys, at)
  return {keys[at], keys[at + 1], keys[at + 2], keys[at + 3], keys[at + 4], keys[at + 5]}
end

-- A take, after acknowledging the n = args[5] (id, count) pairs from args[6] on, taken at
-- args[4]: at most args[2] items, and no more than args[3] bytes' worth of the longest item
-- the queue has had.
local function ack_and_take(k, d, args)
  local m = load(k)
  local dead_q = {keys = d}
  if m.maxr >= 0 then
    -- Loaded before anything is written: a dead-letter queue deleted by hand is made again.
    if redis.call('EXISTS', d[2]) == 0 then
      create(d, -1, m.lease, -1, 0)
    end
    dead_q.m = load(d)
  end
  local n = tonumber(args[5])
  settle_range(m, args[1], 'ack', 0, tonumber(args[4]), args, 6, 5 + 2 * n)
  local max = math.min(tonumber(args[2]), math.max(math.floor(tonumber(args[3]) / math.max(m.maxlen, 1)), 1))
  local reply = take_reply(m, dead_q, args[1], max, now_ms())
  save(m)
  if dead_q.m then
    save(dead_q.m)
  end
  return reply
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
  local m = load(keys)
  local stored = put_range(m, tonumber(args[1]), args, 2, #args)
  save(m)
  return stored
end)

-- KEYS: queue, dead-letter queue. ARGV: consumer, max items, max bytes, when the leases to
-- acknowledge first were taken (ms), n, then those n (id, count) pairs. Returns a take
-- reply.
redis.register_function('distq_1_take', function(keys, args)
  return ack_and_take(queue_keys(keys, 1), queue_keys(keys, 7), args)
end)

-- The fused worker cycle. KEYS: results queue, queue, dead-letter queue. ARGV: as for a
-- take, then the results. Stores the results; if they all fit,
-- acknowledges the pairs and takes. Returns a take reply, or {2, stored} when the results
-- did not all fit (nothing acknowledged or taken).
redis.register_function('distq_1_cycle', function(keys, args)
  local r = load(queue_keys(keys, 1))
  local first = 6 + 2 * tonumber(args[5])
  local stored = put_range(r, 0, args, first, #args)
  save(r)
  if stored < #args - first + 1 then
    return {2, stored}
  end
  return ack_and_take(queue_keys(keys, 7), queue_keys(keys, 13), args)
end)

-- KEYS: queue. ARGV: consumer, op (ack, nack, free, touch), delay ms, when the leases were
-- taken (ms), (id, count) pairs. Returns the ids whose lease the consumer did not hold.
redis.register_function('distq_1_settle', function(keys, args)
  local m = load(keys)
  local lost = settle_range(m, args[1], args[2], tonumber(args[3]), tonumber(args[4]), args, 5, #args)
  save(m)
  return lost
end)

-- How many leases have expired and wait to be taken again (of holders whose bound has
-- passed, up to SCAN entries each).
local function expired_count(m, now)
  local n = 0
  for _, holder in ipairs(redis.call('ZRANGEBYSCORE', m.k[3], '-inf', now, 'LIMIT', 0, 16)) do
    n = n + #redis.call('XPENDING', m.k[1], G, 'IDLE', m.lease, '-', '+', SCAN, holder)
  end
  return n
end

-- KEYS: queue. Returns {waiting, cap (-1: none), lease ms}.
redis.register_function('distq_1_len', function(keys)
  local m = load(keys)
  local now = now_ms()
  local due = expired_count(m, now)
  if m.back > 0 then
    due = due + redis.call('ZCOUNT', keys[4], '-inf', now)
  end
  if m.delayed > 0 then
    due = due + redis.call('ZCOUNT', keys[5], '-inf', now)
  end
  save(m)
  return {m.ready + due, m.cap, m.lease}
end)

-- KEYS: queue, dead-letter queue. Returns {waiting, leased, delayed, cap, put, acked,
-- redelivered, dead_lettered, dead waiting, temporary (1 or 0)}.
redis.register_function{function_name = 'distq_1_stats', flags = {'no-writes'},
  callback = function(keys)
    local k, d = queue_keys(keys, 1), queue_keys(keys, 7)
    local m = load(k)
    local now = now_ms()
    local expired = expired_count(m, now)
    local back_due = redis.call('ZCOUNT', k[4], '-inf', now)
    local pending = redis.call('XPENDING', k[1], G)[1]
    local leased = math.max(pending - m.back - expired, 0)
    local delayed_due = redis.call('ZCOUNT', k[5], '-inf', now)
    back_due = back_due + delayed_due
    local delayed = m.delayed + m.back - back_due
    -- Dead letters waiting: new ones and those given back (by `distq dead ls`, say).
    local dm = redis.call('HMGET', d[2], 'ready', 'back')
    local dead = tonumber(dm[1] or 0) + tonumber(dm[2] or 0)
    return {m.ready + expired + back_due, leased, delayed, m.cap, m.put, m.acked,
      m.redelivered, m.dead_lettered, dead, m.ttl > 0 and 1 or 0}
  end}

-- KEYS: queue. ARGV: consumer, and "drop" for a temporary queue this consumer declared.
-- Removes the consumer from the group if it holds nothing, and any other consumer idle for
-- a day that holds nothing (a worker that died). A temporary queue left empty, with nothing
-- leased, given back or delayed, is removed (returns -1).
redis.register_function('distq_1_leave', function(keys, args)
  if redis.call('EXISTS', keys[2]) == 0 then
    return 0
  end
  local m = load(keys)
  if args[2] == 'drop' and m.ttl > 0 and m.ready == 0 and m.back == 0 and m.delayed == 0
      and redis.call('XPENDING', keys[1], G)[1] == 0 then
    redis.call('DEL', keys[1], keys[2], keys[3], keys[4], keys[5], keys[6])
    return -1
  end
  local removed = 0
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', keys[1], G)) do
    local name, pending, idle = c[2], c[4], c[6]
    if pending == 0 and name ~= PARKED and (name == args[1] or idle > 86400000) then
      redis.call('XGROUP', 'DELCONSUMER', keys[1], G, name)
      redis.call('ZREM', keys[3], name)
      redis.call('HDEL', keys[2], 't:' .. name)
      -- Its mark is gone: no lease taken until now is acknowledged unchecked.
      redis.call('HSET', keys[2], 'tfloor', now_ms())
      removed = removed + 1
    end
  end
  return removed
end)
