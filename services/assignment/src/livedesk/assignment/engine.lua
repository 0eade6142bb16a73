-- LiveDesk routing engine: every change to one tenant's routing state, atomically.
--
-- KEYS[1] is the tenant's generation key "<prefix>{<tenant>}:gen". Every other
-- key the script touches is derived from it and carries the same hash tag, so
-- it lives in the same Redis Cluster slot. ARGV[1] is the operation, ARGV[2]
-- the caller's clock in ms; the rest depends on the operation.
--
-- Keys (B = "<prefix>{<tenant>}:"):
--   B.."gen"          string  generation of this state (absent: state lost -> rebuild)
--   B.."agents"       set     agent ids
--   B.."a:"..id       hash    st status(1 online,2 away,3 offline) sh on-shift(0/1)
--                             cap load w(weight) last(ms) sk(",a,b,") tm(",t,") v m
--   B.."ac:"..id      set     conversations assigned to the agent
--   B.."avail"        zset    agents that may take one more conversation, members
--                             "load|inverted weight|last|id" so ZRANGE order = routing order
--   B.."c:"..id       hash    s(w waiting,a assigned,u unassigned,r resolved) ep ag tm sk x
--                             pr qms cms in rs pa by ams cl actor
--   B.."cls"          set     requirement classes with waiting conversations
--   B.."q:"..class    zset    waiting conversations of one class (team, skills, excluded)
--   B.."tqs"          set     team queues in use
--   B.."tq:"..team    zset    waiting conversations of a team queue ("" = tenant-wide)
--   B.."pos"          hash    last announced position per waiting conversation
--   B.."dirty"        zset    "conv|epoch" changed here and not yet confirmed durable
--
-- Returns {gen, code, changes, extra, more}: changes = { {conv, position, CHANGE_FIELDS...} },
-- more = '1' when a drain stopped at its limit with fits left (call 'drain' again).

local base = string.sub(KEYS[1], 1, -4)
local op = ARGV[1]
local now = tonumber(ARGV[2])
local SEP = '\31'

local function k(s) return base .. s end

local gen = redis.call('GET', KEYS[1])
local restoring = (op == 'restore_agent' or op == 'restore_conv' or op == 'finish')
if not gen and not restoring then
  return {'NOSTATE'}
end

local changed = {}
local changed_order = {}
local function touch(cid)
  if not changed[cid] then
    changed[cid] = true
    changed_order[#changed_order + 1] = cid
  end
end

local function member_of(aid, load, w, last)
  return string.format('%06.0f|%010.0f|%015.0f|', load, 2147483648 - w, last) .. aid
end
local MEMBER_PREFIX = 35  -- 6 + 1 + 10 + 1 + 15 + 1 + 1

local function refresh(aid)
  local ak = k('a:' .. aid)
  local f = redis.call('HMGET', ak, 'st', 'sh', 'cap', 'load', 'w', 'last', 'm')
  if not f[1] then return end
  local old = f[7] or ''
  local new = ''
  if f[1] == '1' and f[2] == '1' and tonumber(f[4]) < tonumber(f[3]) then
    new = member_of(aid, tonumber(f[4]), tonumber(f[5]), tonumber(f[6]))
  end
  if old ~= new then
    if old ~= '' then redis.call('ZREM', k('avail'), old) end
    if new ~= '' then redis.call('ZADD', k('avail'), 0, new) end
    redis.call('HSET', ak, 'm', new)
  end
end

local function split(s)
  local out = {}
  for part in string.gmatch(s, '[^,]+') do out[#out + 1] = part end
  return out
end

local function class_of(team, sk, excl)
  return team .. SEP .. sk .. SEP .. excl
end

local function parse_class(cl)
  local a = string.find(cl, SEP, 1, true)
  local b = string.find(cl, SEP, a + 1, true)
  return string.sub(cl, 1, a - 1), split(string.sub(cl, a + 1, b - 1)), string.sub(cl, b + 1)
end

local profile_cache = {}
local function agent_ok(aid, team, skills, excl)
  if aid == excl then return false end
  if team == '' and #skills == 0 then return true end
  local p = profile_cache[aid]
  if not p then
    p = redis.call('HMGET', k('a:' .. aid), 'sk', 'tm')
    p[1] = p[1] or ''
    p[2] = p[2] or ''
    profile_cache[aid] = p
  end
  if team ~= '' and not string.find(p[2], ',' .. team .. ',', 1, true) then return false end
  for _, s in ipairs(skills) do
    if not string.find(p[1], ',' .. s .. ',', 1, true) then return false end
  end
  return true
end

-- The routing choice among available agents: ZRANGE order is least loaded,
-- then highest priority weight, then longest idle, then agent id.
-- Pages grow (8, 32, 128, ...): the first available agent usually fits, so the
-- common case reads a few members, not a hundred.
local function best_agent(team, skills, excl)
  local start = 0
  local size = 8
  while true do
    local page = redis.call('ZRANGE', k('avail'), start, start + size - 1)
    if #page == 0 then return nil end
    for _, m in ipairs(page) do
      local aid = string.sub(m, MEMBER_PREFIX)
      if agent_ok(aid, team, skills, excl) then return aid end
    end
    start = start + size
    if size < 512 then size = size * 4 end
  end
end

local function score_of(ck)
  local f = redis.call('HMGET', ck, 'pr', 'qms')
  return (10 - tonumber(f[1])) * 1e13 + tonumber(f[2])
end

local function unqueue(cid)
  local ck = k('c:' .. cid)
  local f = redis.call('HMGET', ck, 'cl', 'tm')
  if f[1] and f[1] ~= '' then
    redis.call('ZREM', k('q:' .. f[1]), cid)
    if redis.call('ZCARD', k('q:' .. f[1])) == 0 then redis.call('SREM', k('cls'), f[1]) end
    redis.call('HSET', ck, 'cl', '')
  end
  redis.call('ZREM', k('tq:' .. (f[2] or '')), cid)
  redis.call('HDEL', k('pos'), cid)
end

local function enqueue(cid)
  local ck = k('c:' .. cid)
  local f = redis.call('HMGET', ck, 'tm', 'sk', 'x')
  local cl = class_of(f[1], f[2], f[3])
  local score = score_of(ck)
  redis.call('ZADD', k('q:' .. cl), score, cid)
  redis.call('SADD', k('cls'), cl)
  redis.call('ZADD', k('tq:' .. f[1]), score, cid)
  redis.call('SADD', k('tqs'), f[1])
  redis.call('HSET', ck, 's', 'w', 'ag', '', 'cl', cl)
  redis.call('HINCRBY', ck, 'ep', 1)
  touch(cid)
end

local function unbind(cid)
  local ck = k('c:' .. cid)
  local aid = redis.call('HGET', ck, 'ag')
  if aid and aid ~= '' then
    local ak = k('a:' .. aid)
    if redis.call('SREM', k('ac:' .. aid), cid) == 1 then
      local load = tonumber(redis.call('HGET', ak, 'load') or '0')
      if load > 0 then redis.call('HSET', ak, 'load', load - 1) end
    end
    refresh(aid)
    redis.call('HSET', ck, 'ag', '', 'pa', aid)
  end
  return aid or ''
end

local function claim(cid, aid, by, actor)
  local ck = k('c:' .. cid)
  local ak = k('a:' .. aid)
  if redis.call('HGET', ck, 's') == 'w' then unqueue(cid) end
  local load = tonumber(redis.call('HGET', ak, 'load'))
  redis.call('HSET', ak, 'load', load + 1, 'last', now)
  redis.call('SADD', k('ac:' .. aid), cid)
  refresh(aid)
  redis.call('HSET', ck, 's', 'a', 'ag', aid, 'by', by, 'ams', now, 'actor', actor)
  redis.call('HINCRBY', ck, 'ep', 1)
  touch(cid)
end

-- Assigns waiting conversations while some available agent fits one: each
-- time the highest-ranked class head (priority, then age) that has an
-- eligible agent, to the best such agent. Agents only fill up during a
-- drain, so a class found without an eligible agent stays without one.
local DRAIN_LIMIT = 200
local more = '0'
local function drain(only_class)
  local n = 0
  local dead = {}
  local classes
  if only_class then classes = {only_class} end
  while true do
    if n >= DRAIN_LIMIT then
      more = '1'
      break
    end
    if redis.call('ZCARD', k('avail')) == 0 then break end
    local heads = {}
    for _, cl in ipairs(classes or redis.call('SMEMBERS', k('cls'))) do
      if not dead[cl] then
        local head = redis.call('ZRANGE', k('q:' .. cl), 0, 0, 'WITHSCORES')
        if #head == 0 then
          redis.call('SREM', k('cls'), cl)
        else
          heads[#heads + 1] = {cl, head[1], tonumber(head[2])}
        end
      end
    end
    table.sort(heads, function(x, y)
      if x[3] ~= y[3] then return x[3] < y[3] end
      return x[2] < y[2]
    end)
    local done = false
    for _, h in ipairs(heads) do
      local team, skills, excl = parse_class(h[1])
      local aid = best_agent(team, skills, excl)
      if aid then
        claim(h[2], aid, '1', '')
        done = true
        break
      end
      dead[h[1]] = true
    end
    if not done then break end
    n = n + 1
  end
  return n
end

local function requeue(cid, reason, excl)
  local ck = k('c:' .. cid)
  local prev = unbind(cid)
  redis.call('HSET', ck, 'rs', reason, 'x', excl, 'pa', prev)
  enqueue(cid)
end

-- Fields of a changed conversation in the reply, in this order (store.py CHANGE_FIELDS).
local CHANGE_FIELDS = {'s', 'ep', 'ag', 'tm', 'sk', 'pr', 'qms', 'cms', 'in', 'rs', 'x', 'pa',
  'by', 'ams', 'actor'}

local function result(code, extra)
  local out = {}
  for _, cid in ipairs(changed_order) do
    local ck = k('c:' .. cid)
    local pos = 0
    local f = redis.call('HMGET', ck, unpack(CHANGE_FIELDS))
    if f[1] == 'w' then
      pos = redis.call('ZRANK', k('tq:' .. f[4]), cid) + 1
      redis.call('HSET', k('pos'), cid, pos)
    end
    local entry = {cid, pos}
    for i = 1, #CHANGE_FIELDS do entry[i + 2] = f[i] or '' end
    out[#out + 1] = entry
    redis.call('ZADD', k('dirty'), now, cid .. '|' .. f[2])
  end
  return {gen or '', code, out, extra or {}, more}
end

local function conv_exists(cid)
  return redis.call('EXISTS', k('c:' .. cid)) == 1
end

local RESOLVED_TTL = 86400

if op == 'route' then
  -- (cid team skills priority queued_ms created_ms inbox reason excluded)...: one or many
  -- conversations, routed one after the other exactly as separate calls would.
  for i = 3, #ARGV, 9 do
    local cid = ARGV[i]
    if conv_exists(cid) then
      touch(cid)
    else
      redis.call('HSET', k('c:' .. cid), 'ep', 0, 'tm', ARGV[i + 1], 'sk', ARGV[i + 2],
        'pr', ARGV[i + 3], 'qms', ARGV[i + 4], 'cms', ARGV[i + 5], 'in', ARGV[i + 6],
        'rs', ARGV[i + 7], 'x', ARGV[i + 8], 'pa', '', 'by', '0', 'ams', '0', 'actor', '',
        'ag', '', 'cl', '')
      enqueue(cid)
      -- Only this conversation's class can have gained a fit: every operation
      -- that makes an agent available drains all classes before it returns.
      drain(redis.call('HGET', k('c:' .. cid), 'cl'))
    end
  end
  return result('OK')

elseif op == 'drain' then
  drain()
  return result('OK')

elseif op == 'agent' then
  -- aid version status capacity weight skills teams on_shift last_ms
  local aid = ARGV[3]
  local ak = k('a:' .. aid)
  local v = tonumber(ARGV[4])
  local cur = redis.call('HGET', ak, 'v')
  if cur and tonumber(cur) >= v then return result('STALE') end
  if not cur then
    redis.call('HSET', ak, 'load', 0, 'last', ARGV[11], 'm', '')
    redis.call('SADD', k('agents'), aid)
  end
  redis.call('HSET', ak, 'v', v, 'st', ARGV[5], 'cap', ARGV[6], 'w', ARGV[7], 'sk', ARGV[8],
    'tm', ARGV[9], 'sh', ARGV[10])
  profile_cache[aid] = nil
  local requeued = {}
  if ARGV[5] == '3' then
    for _, cid in ipairs(redis.call('SMEMBERS', k('ac:' .. aid))) do
      requeue(cid, '2', aid)
      requeued[#requeued + 1] = cid
    end
  end
  refresh(aid)
  drain()
  return result('OK', requeued)

elseif op == 'shift' then
  -- aid on_shift
  local ak = k('a:' .. ARGV[3])
  if redis.call('EXISTS', ak) == 0 then return result('NOAGENT') end
  if redis.call('HGET', ak, 'sh') == ARGV[4] then return result('SAME') end
  redis.call('HSET', ak, 'sh', ARGV[4])
  refresh(ARGV[3])
  drain()
  return result('OK')

elseif op == 'requeue' then
  -- cid from_agent reason exclude(0/1) expected_epoch(0 = any)
  local cid = ARGV[3]
  local ck = k('c:' .. cid)
  local f = redis.call('HMGET', ck, 's', 'ag', 'ep')
  if f[1] ~= 'a' or (ARGV[4] ~= '' and f[2] ~= ARGV[4])
      or (ARGV[7] ~= '0' and f[3] ~= ARGV[7]) then
    return result('NOT_ASSIGNED')
  end
  local excl = ''
  if ARGV[6] == '1' then excl = f[2] end
  requeue(cid, ARGV[5], excl)
  drain()
  return result('OK')

elseif op == 'release' then
  -- cid requeue(0/1) actor
  local cid = ARGV[3]
  local ck = k('c:' .. cid)
  local s = redis.call('HGET', ck, 's')
  if not s then return result('NOTFOUND') end
  if ARGV[4] == '1' and s == 'r' then return result('RESOLVED') end
  local prev = ''
  if s == 'a' then prev = unbind(cid) end
  if ARGV[4] == '1' then
    if s ~= 'w' then
      redis.call('HSET', ck, 'rs', '4', 'x', '', 'pa', prev, 'actor', ARGV[5])
      enqueue(cid)
    end
  elseif s == 'a' then
    redis.call('HSET', ck, 's', 'u', 'actor', ARGV[5])
    redis.call('HINCRBY', ck, 'ep', 1)
    touch(cid)
  end
  drain()
  return result('OK', {prev})

elseif op == 'resolve' then
  -- cid  (an unknown conversation leaves a tombstone so a late "created" is ignored)
  local cid = ARGV[3]
  local ck = k('c:' .. cid)
  local s = redis.call('HGET', ck, 's')
  if s == 'r' then return result('SAME') end
  if not s then
    redis.call('HSET', ck, 'ep', 0, 'tm', '', 'sk', '', 'pr', '2', 'qms', now, 'cms', now,
      'in', '', 'rs', '1', 'x', '', 'pa', '', 'by', '0', 'ams', '0', 'actor', '', 'ag', '',
      'cl', '')
  end
  if s == 'w' then unqueue(cid) end
  local prev = ''
  if s == 'a' then prev = unbind(cid) end
  redis.call('HSET', ck, 's', 'r', 'ag', '', 'pa', prev)
  redis.call('HINCRBY', ck, 'ep', 1)
  redis.call('EXPIRE', ck, RESOLVED_TTL)
  touch(cid)
  drain()
  return result('OK', {prev})

elseif op == 'reopen' then
  -- cid team skills priority created_ms inbox
  local cid = ARGV[3]
  local ck = k('c:' .. cid)
  local s = redis.call('HGET', ck, 's')
  if s == 'w' or s == 'a' then return result('SAME') end
  if not s then
    redis.call('HSET', ck, 'ep', 0, 'tm', ARGV[4], 'sk', ARGV[5], 'pr', ARGV[6], 'cms', ARGV[7],
      'in', ARGV[8], 'pa', '', 'by', '0', 'ams', '0', 'actor', '', 'ag', '', 'cl', '')
  end
  redis.call('HSET', ck, 'qms', now, 'rs', '6', 'x', '')
  enqueue(cid)
  drain()
  return result('OK')

elseif op == 'assign' then
  -- cid aid force(0/1) by actor allow_taken(0/1)
  local cid, aid = ARGV[3], ARGV[4]
  local ck = k('c:' .. cid)
  local f = redis.call('HMGET', ck, 's', 'ag')
  if not f[1] then return result('NOTFOUND') end
  local ak = k('a:' .. aid)
  local a = redis.call('HMGET', ak, 'st', 'sh', 'cap', 'load')
  if not a[1] then return result('NOAGENT') end
  if f[1] == 'r' then return result('RESOLVED') end
  if f[1] == 'a' and f[2] == aid then
    if ARGV[8] == '1' then return result('SAME_TARGET') end
    touch(cid)
    return result('SAME')
  end
  if f[1] == 'a' and ARGV[8] ~= '1' then return result('TAKEN', {f[2]}) end
  if a[1] == '3' then return result('OFFLINE') end
  if ARGV[5] ~= '1' then
    if a[1] ~= '1' then return result('AWAY') end
    if a[2] ~= '1' then return result('OFF_SHIFT') end
    if tonumber(a[4]) >= tonumber(a[3]) then return result('FULL') end
  end
  local prev = ''
  if f[1] == 'a' then prev = unbind(cid) end
  redis.call('HSET', ck, 'pa', prev)
  claim(cid, aid, ARGV[6], ARGV[7])
  drain()
  return result('OK', {prev})

elseif op == 'to_team' then
  -- cid team actor
  local cid = ARGV[3]
  local ck = k('c:' .. cid)
  local s = redis.call('HGET', ck, 's')
  if not s then return result('NOTFOUND') end
  if s == 'r' then return result('RESOLVED') end
  if s == 'w' then unqueue(cid) end
  local prev = ''
  if s == 'a' then prev = unbind(cid) end
  redis.call('HSET', ck, 'tm', ARGV[4], 'rs', '5', 'x', prev, 'pa', prev, 'actor', ARGV[5])
  enqueue(cid)
  drain()
  return result('OK', {prev})

elseif op == 'get' then
  -- cid...: the current state of these conversations (reconciliation, reads)
  for i = 3, #ARGV do
    if conv_exists(ARGV[i]) then touch(ARGV[i]) end
  end
  return result('OK')

elseif op == 'positions' then
  -- max: positions changed since last announced, at most max of them
  local limit = tonumber(ARGV[3])
  local out = {}
  for _, team in ipairs(redis.call('SMEMBERS', k('tqs'))) do
    local members = redis.call('ZRANGE', k('tq:' .. team), 0, -1)
    if #members == 0 then redis.call('SREM', k('tqs'), team) end
    for i, cid in ipairs(members) do
      if #out >= limit then break end
      local old = redis.call('HGET', k('pos'), cid)
      if old ~= tostring(i) then
        redis.call('HSET', k('pos'), cid, i)
        local f = redis.call('HMGET', k('c:' .. cid), 'pr', 'rs', 'pa')
        out[#out + 1] = {cid, i, team, f[1], f[2], f[3] or ''}
      end
    end
  end
  return {gen, 'OK', {}, out}

elseif op == 'agent_marks' then
  -- every agent's version and on-shift flag: {aid, v, sh, aid, v, sh, ...}
  local out = {}
  for _, aid in ipairs(redis.call('SMEMBERS', k('agents'))) do
    local f = redis.call('HMGET', k('a:' .. aid), 'v', 'sh')
    out[#out + 1] = aid
    out[#out + 1] = f[1] or ''
    out[#out + 1] = f[2] or ''
  end
  return {gen, 'OK', {}, out}

elseif op == 'restore_agent' then
  -- aid version status capacity weight skills teams on_shift last_ms
  local aid = ARGV[3]
  redis.call('HSET', k('a:' .. aid), 'v', ARGV[4], 'st', ARGV[5], 'cap', ARGV[6], 'w', ARGV[7],
    'sk', ARGV[8], 'tm', ARGV[9], 'sh', ARGV[10], 'last', ARGV[11], 'load', 0, 'm', '')
  redis.call('SADD', k('agents'), aid)
  return {'', 'OK', {}, {}}

elseif op == 'restore_conv' then
  -- cid state epoch agent team skills priority queued_ms created_ms inbox reason excluded
  -- prev_agent assigned_by assigned_ms
  local cid = ARGV[3]
  local ck = k('c:' .. cid)
  redis.call('HSET', ck, 's', ARGV[4], 'ep', ARGV[5], 'ag', ARGV[6], 'tm', ARGV[7],
    'sk', ARGV[8], 'pr', ARGV[9], 'qms', ARGV[10], 'cms', ARGV[11], 'in', ARGV[12],
    'rs', ARGV[13], 'x', ARGV[14], 'pa', ARGV[15], 'by', ARGV[16], 'ams', ARGV[17],
    'actor', '', 'cl', '')
  if ARGV[4] == 'a' then
    redis.call('SADD', k('ac:' .. ARGV[6]), cid)
  elseif ARGV[4] == 'r' then
    redis.call('EXPIRE', ck, RESOLVED_TTL)
  elseif ARGV[4] == 'w' then
    local f = redis.call('HMGET', ck, 'tm', 'sk', 'x')
    local cl = class_of(f[1], f[2], f[3])
    local score = score_of(ck)
    redis.call('ZADD', k('q:' .. cl), score, cid)
    redis.call('SADD', k('cls'), cl)
    redis.call('ZADD', k('tq:' .. f[1]), score, cid)
    redis.call('SADD', k('tqs'), f[1])
    redis.call('HSET', ck, 'cl', cl)
  end
  return {'', 'OK', {}, {}}

elseif op == 'finish' then
  -- gen: loads from the restored bindings, availability, then the state is live
  -- An offline agent keeps nothing: a requeue whose record was refused as
  -- stale by this very rebuild is made again here.
  for _, aid in ipairs(redis.call('SMEMBERS', k('agents'))) do
    redis.call('HSET', k('a:' .. aid), 'load', redis.call('SCARD', k('ac:' .. aid)))
    if redis.call('HGET', k('a:' .. aid), 'st') == '3' then
      for _, cid in ipairs(redis.call('SMEMBERS', k('ac:' .. aid))) do
        requeue(cid, '2', aid)
      end
    end
    refresh(aid)
  end
  redis.call('SET', KEYS[1], ARGV[3])
  gen = ARGV[3]
  drain()
  return result('OK')
end

return redis.error_reply('unknown operation ' .. tostring(op))
