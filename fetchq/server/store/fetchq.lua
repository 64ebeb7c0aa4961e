#!lua name=fetchq
-- The broker's state on Valkey or Redis: one function per broker call, each atomic
-- in the store and one round trip (see fetchq/server/store/broker.py, which checks
-- the arguments and shapes the replies; docs/store.md says what lives where).
--
-- Times are seconds as strings written with %.17g: Lua's own tostring keeps 14
-- digits, too few for Unix time in microseconds.  A time argument left empty is
-- taken from the store's clock (TIME), so that servers on different hosts agree.

local LOOKAHEAD = 1.0      -- seconds before its start a paced task may be leased
local CANCEL_BATCH = 10000 -- queued tasks of a cancelled job ended per call
local BATCH_MEMORY = 86400 -- seconds a submit's batch id is remembered

local function num(x) return string.format('%.17g', x) end

local function clock(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- A call's monotonic and wall times; on the store's clock, one reading for both, so
-- that the offset between them (a start in Unix time) never wobbles.
local function clocks(now_arg, wall_arg)
  local now = clock(now_arg)
  if wall_arg == nil or wall_arg == '' then return now, now end
  return now, tonumber(wall_arg)
end

-- A shard: every key of one starts with its hash tag (``{fq}``, the first, or ``{fq:K}``),
-- so that a Redis Cluster keeps each shard in one slot, on one node; a call works in
-- the shard its key names, and sets these two first (``in_shard``, at the end).  A
-- job's keys are ``TAG:job/JOB/PART`` (a job name has no '/'; connection.py names
-- them alike).  Shard K numbers its tasks from K * ID_SPAN: an id tells its shard.
local P = '{fq}'
local BASE = 0
local ID_SPAN = 1099511627776 -- 2^40 (connection.py)

local function jk(job, part) return P .. ':job/' .. job .. '/' .. part end

-- What the functions publish on, one pair for every shard (a Cluster passes messages
-- to all its nodes).
local CHANNEL_TASKS, CHANNEL_RESULTS = '{fq}:tasks', '{fq}:results'

local function split(text)
  local fields = {}
  for field in string.gmatch(text, '([^\t]*)\t?') do fields[#fields + 1] = field end
  return fields
end

-- Id ranges: one member per submitted batch, scored by its first id.
local function range_of(id)
  local found = redis.call('ZREVRANGEBYSCORE', P .. ':ranges', id, '-inf', 'LIMIT', 0, 1)
  if #found == 0 then return nil end
  local f = split(found[1])
  local first, count = tonumber(f[1]), tonumber(f[2])
  if id >= first + count then return nil end
  return {first = first, count = count, attempts = tonumber(f[3]), timeout = f[4],
          submitted = f[5], spec = f[6], job = f[7]}
end

local function due_member(job, id) return job .. '\n' .. id end

-- ``command key values...`` for a long list, a thousand values a call: Lua unpacks no
-- more than a few thousand at once (pairs stay whole: the step is even).
local CHUNK = 1000
local function chunked(command, key, values)
  for i = 1, #values, CHUNK do
    redis.call(command, key, unpack(values, i, math.min(i + CHUNK - 1, #values)))
  end
end

-- Workers ------------------------------------------------------------------

local RATE_WINDOW = 10

local function seen(worker, now, reported)
  local raw = redis.call('HGET', P .. ':workers', worker)
  local w
  if raw then w = cjson.decode(raw) else
    w = {first = num(now), threads = 0, runs = {}, reported = 0, recent = {}}
  end
  w.last = num(now)
  w.recent, w.runs = w.recent or {}, w.runs or {}
  if reported and reported > 0 then
    w.reported = w.reported + reported
    local second = tostring(math.floor(now))
    w.recent[second] = (w.recent[second] or 0) + reported
  end
  local recent = {}
  for second, count in pairs(w.recent) do
    if tonumber(second) > now - RATE_WINDOW - 1 then recent[second] = count end
  end
  w.recent = recent
  return w
end

local function keep_worker(worker, w)
  if next(w.recent) == nil then w.recent = nil end
  if next(w.runs) == nil then w.runs = nil end
  redis.call('HSET', P .. ':workers', worker, cjson.encode(w))
end

local function note_worker(worker, now, reported)
  keep_worker(worker, seen(worker, now, reported))
end

-- Tasks and results --------------------------------------------------------

-- A job with host limits keeps a queue per host (``hq:HOST``) and a ring of the hosts
-- that have tasks queued; a task then carries its host as a third field.
local function host_queued(job, host, id, front)
  local queue = jk(job, 'hq:' .. host)
  if front then redis.call('LPUSH', queue, id) else redis.call('RPUSH', queue, id) end
  if redis.call('HSETNX', jk(job, 'hosts'), host, 1) == 1 then
    redis.call('RPUSH', jk(job, 'ring'), host)
  end
end

-- Jobs with tasks queued (``{fq}:active``, in the order they were made): all a lease or
-- a cancel looks at, however many jobs the store has known.
local function active(job)
  redis.call('ZADD', P .. ':active', 'NX', redis.call('ZSCORE', P .. ':jobs', job), job)
end

local function queue_again(job, id, task, front)
  active(job)
  redis.call('HSET', jk(job, 'tasks'), id, cjson.encode(task))
  if task[3] then
    host_queued(job, task[3], id, front)
  else
    redis.call(front and 'LPUSH' or 'RPUSH', jk(job, 'queue'), id)
  end
  redis.call('HINCRBY', jk(job, 'meta'), 'queued', 1)
  redis.call('INCR', P .. ':queued')
end

local function unqueued(job, count)
  if redis.call('HINCRBY', jk(job, 'meta'), 'queued', -count) <= 0 then
    redis.call('ZREM', P .. ':active', job)
  end
  redis.call('DECRBY', P .. ':queued', count)
end

-- The task is done: its result (raw JSON, or '!' and what the server ended it with)
-- waits for an output.
local function finish(job, id, value, ok)
  redis.call('HDEL', jk(job, 'tasks'), id)
  redis.call('RPUSH', jk(job, 'results'), id)
  redis.call('HSET', jk(job, 'result'), id, value)
  redis.call('HINCRBY', jk(job, 'meta'), ok and 'succeeded' or 'failed', 1)
  redis.call('INCR', P .. ':unconfirmed')
  redis.call('PUBLISH', CHANNEL_RESULTS, job)
end

-- What the server ended a task with (cancelled, out of attempts): '!' and its reason,
-- made into a result by the Python side; a span's, into an aggregate of all its
-- requests failed, which its job counts now.
local function ended(kind, message, worker, task, wall, range, job)
  if task[4] then redis.call('HINCRBY', jk(job, 'meta'), 'req_failed', task[4]) end
  return '!' .. cjson.encode({kind, message, worker, task[1], num(wall), task[2],
                              range.timeout, range.submitted, task[4] and true or false})
end

-- A lease is over: its host (a job with host limits) has one request fewer in flight.
local function end_lease(job, id, task)
  redis.call('HDEL', jk(job, 'holders'), id)
  redis.call('ZREM', P .. ':due', due_member(job, id))
  if task and task[3] then
    redis.call('HINCRBY', jk(job, 'flight'), task[3], -1)
    redis.call('HINCRBY', P .. ':flight', task[3], -1) -- every job's, for the server's cap
  end
  if task and task[4] then redis.call('HINCRBY', jk(job, 'meta'), 'req_leased', -task[4]) end
end

local function expire(now, wall)
  local lapsed = 0
  local due = redis.call('ZRANGEBYSCORE', P .. ':due', '-inf', num(now), 'LIMIT', 0, 10000)
  for _, member in ipairs(due) do
    local job, id = string.match(member, '^(.-)\n(-?%d+)$')
    if string.sub(id, 1, 1) == '-' then -- a robots.txt fetch: asked again
      local probe = redis.call('HGET', jk(job, 'probes'), id)
      redis.call('ZREM', P .. ':due', member)
      if probe then
        probe = cjson.decode(probe)
        redis.call('HDEL', jk(job, 'probes'), id)
        redis.call('HDEL', P .. ':probe_jobs', id)
        redis.call('HDEL', jk(job, 'robots'), probe.host)
        redis.call('HINCRBY', jk(job, 'flight'), probe.host, -1)
        redis.call('HINCRBY', P .. ':flight', probe.host, -1)
      end
      id = nil
    end
    if id then
      local worker = redis.call('HGET', jk(job, 'holders'), id)
      local raw = redis.call('HGET', jk(job, 'tasks'), id)
      local task = raw and cjson.decode(raw)
      if worker then end_lease(job, id, task) else redis.call('ZREM', P .. ':due', member) end
      if worker and raw then
        local range = range_of(tonumber(id))
        local meta = jk(job, 'meta')
        redis.call('HINCRBY', meta, 'expired', 1)
        if task[1] >= range.attempts or redis.call('HGET', meta, 'state') == 'cancelled' then
          local message = 'lease expired on worker ' .. worker .. ' (attempt ' .. task[1] ..
                          ' of ' .. range.attempts .. '); giving up'
          finish(job, id, ended('lease_expired', message, worker, task, wall, range, job), false)
        else
          task[1] = task[1] + 1
          queue_again(job, id, task, true)
        end
        lapsed = lapsed + 1
      end
    end
  end
  if lapsed > 0 then redis.call('PUBLISH', CHANNEL_TASKS, lapsed) end
  -- Deliveries not confirmed in time go back to the front, in their first order.
  local tokens = redis.call('ZRANGEBYSCORE', P .. ':delivery_due', '-inf', num(now))
  if #tokens > 0 then
    local deliveries = {}
    for _, token in ipairs(tokens) do
      local raw = redis.call('HGET', P .. ':deliveries', token)
      if raw then
        local delivery = cjson.decode(raw)
        delivery.token = token
        deliveries[#deliveries + 1] = delivery
      end
      redis.call('ZREM', P .. ':delivery_due', token)
      redis.call('HDEL', P .. ':deliveries', token)
    end
    table.sort(deliveries, function(a, b) return a.s > b.s end) -- latest first: each goes in front
    for _, delivery in ipairs(deliveries) do
      for i = #delivery.jobs, 1, -1 do
        local job, ids = delivery.jobs[i][1], delivery.jobs[i][2]
        for k = #ids, 1, -1 do redis.call('LPUSH', jk(job, 'results'), ids[k]) end
        redis.call('HINCRBY', jk(job, 'meta'), 'handed_out', -#ids)
        redis.call('PUBLISH', CHANNEL_RESULTS, job)
      end
    end
  end
  return lapsed
end

-- Cancelled jobs' queued tasks end as results, as far as the results' room allows.
local function end_cancelled(wall, room)
  local ended_count = 0
  if room <= 0 then return 0 end
  for _, job in ipairs(redis.call('ZRANGE', P .. ':active', 0, -1)) do
    local meta = jk(job, 'meta')
    local state, queued = unpack(redis.call('HMGET', meta, 'state', 'queued'))
    while state == 'cancelled' and tonumber(queued) > 0 and ended_count < math.min(room, CANCEL_BATCH) do
      local id = redis.call('LPOP', jk(job, 'queue'))
      if not id then
        local host = redis.call('LINDEX', jk(job, 'ring'), 0)
        if not host then break end
        id = redis.call('LPOP', jk(job, 'hq:' .. host))
        if not id or redis.call('LLEN', jk(job, 'hq:' .. host)) == 0 then
          redis.call('LPOP', jk(job, 'ring'))
          redis.call('HDEL', jk(job, 'hosts'), host)
        end
      end
      if not id then break end
      local raw = redis.call('HGET', jk(job, 'tasks'), id)
      if raw and redis.call('HEXISTS', jk(job, 'holders'), id) == 0 then
        local task = cjson.decode(raw)
        local range = range_of(tonumber(id))
        unqueued(job, 1)
        finish(job, id, ended('cancelled', 'job ' .. job .. ' was cancelled', 'server', task,
                              wall, range, job), false)
        ended_count = ended_count + 1
      end
      queued = redis.call('HGET', meta, 'queued')
    end
  end
  return ended_count
end

local RECENT = 10 -- whole seconds a job's pace is measured over (fetchq/server/jobs.py)

-- Results taken in at ``now``: counted in the second they came in (``requests`` of
-- them, for an aggregate job's), the seconds too old to be measured let go.
local function pace_seen(job, now, results, requests, elapsed)
  local second = math.floor(now)
  local seconds = jk(job, 'seconds')
  redis.call('HINCRBY', seconds, 'n' .. second, requests > 0 and requests or results)
  redis.call('HINCRBYFLOAT', seconds, 'e' .. second, num(elapsed))
  redis.call('HSETNX', jk(job, 'meta'), 'first_result', num(now))
  for old = second - RECENT - 4, second - RECENT - 1 do
    redis.call('HDEL', seconds, 'n' .. old, 'e' .. old)
  end
end

local function job_done(meta)
  local sealed, confirmed, submitted = unpack(redis.call('HMGET', meta, 'sealed', 'confirmed', 'submitted'))
  return sealed == '1' and tonumber(confirmed) == tonumber(submitted)
end

-- A job's counters as the Python side reads them (a flat list of field, value).
local COUNTERS = {'submitted', 'queued', 'succeeded', 'failed', 'expired', 'handed_out',
                  'confirmed', 'sealed', 'state', 'policy', 'late', 'worst_late', 'created',
                  'next_slot', 'aggregate', 'req_submitted',
                  'req_succeeded', 'req_failed', 'req_leased', 'anchor', 'first_result'}

local BUSIEST = 1000 -- hosts a job's counts look at for its busiest

local function counts(job)
  local meta = jk(job, 'meta')
  local values = redis.call('HMGET', meta, unpack(COUNTERS))
  local reply = {job}
  for i, name in ipairs(COUNTERS) do
    reply[#reply + 1] = name
    reply[#reply + 1] = values[i] or ''
  end
  -- Its pace lately: results (requests, for an aggregate job) and elapsed summed, by
  -- the second they came in; and its hosts: queued (ids, done ones included) and in
  -- flight, as ``host queued in_flight`` lines.
  reply[#reply + 1] = 'seconds'
  reply[#reply + 1] = cjson.encode(redis.call('HGETALL', jk(job, 'seconds')))
  local hosts, rows = {}, {}
  for _, host in ipairs(redis.call('LRANGE', jk(job, 'ring'), 0, BUSIEST - 1)) do hosts[host] = true end
  local flight = redis.call('HGETALL', jk(job, 'flight'))
  local running = {}
  for i = 1, #flight, 2 do
    if tonumber(flight[i + 1]) > 0 then hosts[flight[i]], running[flight[i]] = true, flight[i + 1] end
  end
  for host in pairs(hosts) do
    rows[#rows + 1] = host .. ' ' .. redis.call('LLEN', jk(job, 'hq:' .. host)) .. ' ' .. (running[host] or 0)
  end
  reply[#reply + 1] = 'hosts'
  reply[#reply + 1] = table.concat(rows, '\n')
  reply[#reply + 1] = 'leased' -- robots.txt fetches too
  reply[#reply + 1] = tostring(redis.call('HLEN', jk(job, 'holders')) + redis.call('HLEN', jk(job, 'probes')))
  reply[#reply + 1] = 'waiting'
  reply[#reply + 1] = tostring(redis.call('LLEN', jk(job, 'results')))
  return reply
end

local function limits_hosts(policy)
  local cap, delay = policy.per_host, policy.host_delay
  return (cap ~= nil and cap ~= cjson.null) or (type(delay) == 'number' and delay > 0)
    or policy.retry_after == true or policy.obey_robots == true
end

local function same_value(have, wanted)
  if type(have) == 'number' and type(wanted) == 'number' then
    return math.abs(have - wanted) <= 1e-9 * math.max(math.abs(have), math.abs(wanted))
  end
  if type(have) == 'table' and type(wanted) == 'table' then -- stages: lists of lists
    if #have ~= #wanted then return false end
    for i = 1, #have do
      if not same_value(have[i], wanted[i]) then return false end
    end
    return true
  end
  return have == wanted
end

-- Why a job made already takes no tasks under ``change`` (its dispatch's policy), or
-- nil: a cancelled job, or one of another pace.
local function refusal(meta, change)
  if redis.call('HGET', meta, 'state') == 'cancelled' then return {'cancelled'} end
  local have = cjson.decode(redis.call('HGET', meta, 'policy'))
  for name, wanted in pairs(cjson.decode(change)) do
    if not same_value(have[name], wanted) then
      return {'policy', name, cjson.encode({have[name]})}
    end
  end
  return nil
end

local function make_job(job, wall, policy, by_host, aggregate)
  redis.call('ZADD', P .. ':jobs', redis.call('INCR', P .. ':jobseq'), job)
  redis.call('HSET', jk(job, 'meta'), 'created', num(wall), 'submitted', 0, 'queued', 0,
             'succeeded', 0, 'failed', 0, 'expired', 0, 'handed_out', 0, 'confirmed', 0,
             'state', '', 'policy', policy, 'late', 0, 'worst_late', 0, 'elapsed', 0,
             'elapsed_n', 0, 'next_slot', '-inf', 'fresh', 1, 'by_host', by_host and 1 or 0,
             'aggregate', aggregate and 1 or 0, 'req_submitted', 0, 'req_succeeded', 0,
             'req_failed', 0, 'req_leased', 0)
end

-- The calls -------------------------------------------------------------------

-- hello(now, worker, threads, runs_json): a worker says who it is.
local function hello(keys, args)
  local now = clock(args[1])
  local w = seen(args[2], now)
  w.threads = tonumber(args[3])
  w.runs = cjson.decode(args[4])
  keep_worker(args[2], w)
  return num(now)
end

-- submit(now, wall, job, batch_id, attempts, timeout, max_pending, change, policy,
--        spec, max_specs, hosted, nspecs, [key, record]..., urls..., [hosts...],
--        sizes, server_limits, elsewhere): ``hosted`` is 1 when each URL's host follows
-- the URLs, as a job with host limits needs ('hosts' asks for them); with
-- ``server_limits`` 1 (the servers limit every host), every new job but an aggregate
-- one has them; ``elsewhere``, the tasks queued in the other shards.
-- ``sizes``: for spans (an aggregate job's tasks, whose texts stand in the URLs'
-- place), the requests of each, comma-separated; empty for URLs.
local function submit(keys, args)
  local wall = clock(args[2])
  local job, batch_id = args[3], args[4]
  local attempts, timeout, max_pending = args[5], args[6], tonumber(args[7])
  local change, policy, spec, max_specs = args[8], args[9], args[10], tonumber(args[11])
  local hosted, nspecs = args[12] == '1', tonumber(args[13])
  local server_limits, elsewhere = args[#args - 1] == '1', tonumber(args[#args])
  local sizes = {}
  for size in string.gmatch(args[#args - 2], '%d+') do sizes[#sizes + 1] = tonumber(size) end
  local spans = args[#args - 2] ~= ''
  local first_url = 14 + 2 * nspecs
  local count = #args - first_url - 2
  if hosted then count = count / 2 end
  if batch_id ~= '' then
    local reply = redis.call('GET', P .. ':batch:' .. batch_id)
    if reply then return {'seen', reply} end
  end
  local meta = jk(job, 'meta')
  local exists = redis.call('EXISTS', meta) == 1
  local by_host, aggregate
  if exists then
    local refused = refusal(meta, change)
    if refused then return refused end
    by_host = redis.call('HGET', meta, 'by_host') == '1'
    aggregate = redis.call('HGET', meta, 'aggregate') == '1'
  else
    aggregate = cjson.decode(policy).aggregate == true
    by_host = not aggregate and (server_limits or limits_hosts(cjson.decode(policy)))
  end
  if spans and not aggregate then return {'mixed', 'spans'} end
  if aggregate and not spans then return {'mixed', 'urls'} end
  if by_host and not hosted and count > 0 then return {'hosts'} end
  local specs = jk(job, 'specs')
  local new_specs = 0
  for i = 0, nspecs - 1 do
    if redis.call('HEXISTS', specs, args[14 + 2 * i]) == 0 then new_specs = new_specs + 1 end
  end
  if spec ~= '' and redis.call('HEXISTS', specs, spec) == 0 then
    local brought = false
    for i = 0, nspecs - 1 do brought = brought or args[14 + 2 * i] == spec end
    if not brought then return {'nospec'} end
  end
  if redis.call('HLEN', specs) + new_specs > max_specs then return {'specs'} end
  local queued = tonumber(redis.call('GET', P .. ':queued') or '0') + elsewhere
  if queued > 0 and queued + count > max_pending then return {'full', tostring(queued)} end
  local reopened = exists and job_done(meta)
  if not exists then make_job(job, wall, policy, by_host, aggregate) end
  if aggregate then
    local requests = 0
    for _, size in ipairs(sizes) do requests = requests + size end
    redis.call('HINCRBY', meta, 'req_submitted', requests)
  end
  for i = 0, nspecs - 1 do
    redis.call('HSETNX', specs, args[14 + 2 * i], args[15 + 2 * i])
  end
  if tonumber(redis.call('HGET', meta, 'queued')) == 0 then redis.call('HSET', meta, 'fresh', 1) end
  redis.call('HSET', meta, 'sealed', 0)
  redis.call('HINCRBY', meta, 'submitted', count)
  local first = redis.call('INCRBY', P .. ':ids', count) - count + 1 + BASE
  if count > 0 then
    redis.call('ZADD', P .. ':ranges', first, table.concat(
      {first, count, attempts, timeout, num(wall), spec, job}, '\t'))
    local tasks, queue = jk(job, 'tasks'), jk(job, 'queue')
    local fields, ids = {}, {}
    for i = 0, count - 1 do
      fields[#fields + 1] = first + i
      if by_host then
        local host = args[first_url + count + i]
        fields[#fields + 1] = cjson.encode({1, args[first_url + i], host})
        host_queued(job, host, first + i, false)
      elseif aggregate then
        fields[#fields + 1] = cjson.encode({1, args[first_url + i], false, sizes[i + 1]})
        ids[#ids + 1] = first + i
      else
        fields[#fields + 1] = cjson.encode({1, args[first_url + i]})
        ids[#ids + 1] = first + i
      end
      if #fields == 2000 or i == count - 1 then
        redis.call('HSET', tasks, unpack(fields))
        if #ids > 0 then redis.call('RPUSH', queue, unpack(ids)) end
        fields, ids = {}, {}
      end
    end
    redis.call('HINCRBY', meta, 'queued', count)
    redis.call('INCRBY', P .. ':queued', count)
    active(job)
    redis.call('PUBLISH', CHANNEL_TASKS, count)
  end
  local reply = {accepted = count, first_id = first}
  if reopened then reply.reopened = true end
  local encoded = cjson.encode(reply)
  if batch_id ~= '' then redis.call('SET', P .. ':batch:' .. batch_id, encoded, 'EX', BATCH_MEMORY) end
  return {'ok', encoded}
end

-- seal(wall, job)
local function seal(keys, args)
  local wall, job = clock(args[1]), args[2]
  local meta = jk(job, 'meta')
  if redis.call('EXISTS', meta) == 0 then
    redis.call('ZADD', P .. ':jobs', redis.call('INCR', P .. ':jobseq'), job)
    redis.call('HSET', meta, 'created', num(wall), 'submitted', 0, 'queued', 0, 'succeeded', 0,
               'failed', 0, 'expired', 0, 'handed_out', 0, 'confirmed', 0, 'state', '',
               'policy', args[3], 'late', 0, 'worst_late', 0, 'elapsed', 0, 'elapsed_n', 0,
               'next_slot', '-inf', 'fresh', 1)
  end
  redis.call('HSET', meta, 'sealed', 1)
  redis.call('PUBLISH', CHANNEL_RESULTS, job)
  return counts(job)
end

-- create(wall, job, change, policy, server_limits): a job of several shards is made in
-- each before its first tasks reach any, so that each checks its dispatches alike
-- (``submit`` says what the arguments are); 'ok' and the policy the job has (``policy``
-- if it is new), or why a job made already refuses.
local function create(keys, args)
  local wall, job, change, policy = clock(args[1]), args[2], args[3], args[4]
  local meta = jk(job, 'meta')
  if redis.call('EXISTS', meta) == 1 then
    return refusal(meta, change) or {'ok', redis.call('HGET', meta, 'policy')}
  end
  local decoded = cjson.decode(policy)
  local aggregate = decoded.aggregate == true
  make_job(job, wall, policy, not aggregate and (args[5] == '1' or limits_hosts(decoded)), aggregate)
  return {'ok', policy}
end

local MAX_HOST_VISITS = 1000 -- hosts one lease call looks at in one job

-- A staged rate (a policy's ``stages``, [seconds, start rate, end rate] each), in the
-- terms of fetchq/wire/stages.py: request n starts where the rate's integral reaches
-- n + 1/2; past the stages, the last rate they had holds.
local function stage_plan(stages)
  local plan = {stages = stages, begins = {}, counts = {}, tail = 0}
  local at, count = 0, 0
  for i, stage in ipairs(stages) do
    plan.begins[i], plan.counts[i] = at, count
    at, count = at + stage[1], count + (stage[2] + stage[3]) / 2 * stage[1]
  end
  plan.duration, plan.total = at, count
  for i = #stages, 1, -1 do
    local rate = stages[i][3] > 0 and stages[i][3] or stages[i][2]
    if rate > 0 then plan.tail = rate break end
  end
  return plan
end

-- Seconds after the stages' start at which request ``n`` starts.
local function start_of(plan, n)
  local target = n + 0.5
  if target > plan.total then
    if plan.tail == 0 then return math.huge end
    return plan.duration + (target - plan.total) / plan.tail
  end
  local index = 1 -- the last stage that begins below the target (never a pause)
  for i = 1, #plan.counts do if plan.counts[i] < target then index = i end end
  local stage, left = plan.stages[index], target - plan.counts[index]
  -- The rate is a + (b - a) t / T; its integral a t + k t^2, solved for t in the form
  -- that loses no precision when k is small.
  local a, k = stage[2], (stage[3] - stage[2]) / (2 * stage[1])
  local root = math.sqrt(math.max(0, a * a + 4 * k * left))
  local into = a + root > 0 and math.min(stage[1], 2 * left / (a + root)) or stage[1]
  return plan.begins[index] + into
end

-- The integral of a staged rate from its start to ``t`` seconds.
local function started_by(plan, t)
  if t <= 0 then return 0 end
  if t >= plan.duration then return plan.total + (t - plan.duration) * plan.tail end
  local index = 1 -- the stage ``t`` falls in
  for i = 1, #plan.begins do if plan.begins[i] <= t then index = i end end
  local stage, into = plan.stages[index], t - plan.begins[index]
  local rate_then = stage[2] + (stage[3] - stage[2]) * into / stage[1]
  return plan.counts[index] + (stage[2] + rate_then) / 2 * into
end

-- The staged slot after request ``index`` started at ``start``: the first that is not
-- before it (``Pace._after``).
local function slot_after(plan, anchor, start, index)
  index = math.max(index + 1, math.ceil(started_by(plan, start - anchor) - 0.5))
  local slot = anchor + start_of(plan, index)
  if slot < start then -- (rounding: a slot a hair before its start)
    index = index + 1
    slot = anchor + start_of(plan, index)
  end
  return slot, index
end

-- A leased task as the server reads it, appended to ``out``: 9 fields, the last its
-- kind (``span`` for an aggregate job's span; the caller may mark it otherwise).
local function record(out, job, id, task, range, start, offset)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4] = id, job, task[2], tostring(task[1])
  out[n + 5], out[n + 6] = range.timeout, range.submitted
  out[n + 7], out[n + 8] = start and num(start + offset) or '', range.spec
  out[n + 9] = task[4] and 'span' or ''
end

-- The lease of one task to ``worker``, to start at ``start`` (nil: at once), appended
-- to ``out``.
local function grant(job, id, task, range, worker, start, now, offset, timeout, out)
  local deadline = (start and math.max(now, start) or now) + timeout
  redis.call('HSET', jk(job, 'holders'), id, worker)
  redis.call('ZADD', P .. ':due', num(deadline), due_member(job, id))
  record(out, job, id, task, range, start, offset)
end

-- The next live task of a queue (stale ids, of tasks done or leased, are dropped).
local function next_task(job, queue)
  while true do
    local id = redis.call('LPOP', queue)
    if not id then return nil end
    local raw = redis.call('HGET', jk(job, 'tasks'), id)
    if raw and redis.call('HEXISTS', jk(job, 'holders'), id) == 0 then
      return id, cjson.decode(raw)
    end
  end
end

local function range_for(id, range)
  local n = tonumber(id)
  if range and n >= range.first and n < range.first + range.count then return range end
  return range_of(n)
end

local ROBOTS_TIMEOUT = 30 -- seconds a worker may take to fetch a robots.txt

-- A fetch of the host's robots.txt, leased to ``worker`` as a task of kind ``robots``
-- (under a negative id: never a task's) with a URL of the host, whose origin the
-- server turns into the robots.txt's; counted in flight on the host.  False when the
-- host has no task left to take a URL from.
local function probe_host(job, host, queue, worker, now, wall, timeout, out)
  local url
  for _, id in ipairs(redis.call('LRANGE', queue, 0, 20)) do
    local raw = redis.call('HGET', jk(job, 'tasks'), id)
    if raw then url = cjson.decode(raw)[2] break end
  end
  if not url then return false end
  local id = tostring(redis.call('DECR', P .. ':probe_ids') - BASE)
  local attempt = redis.call('HINCRBY', jk(job, 'probes_made'), host, 1)
  redis.call('HSET', jk(job, 'probes'), id, cjson.encode({host = host, attempt = attempt}))
  redis.call('HSET', P .. ':probe_jobs', id, job)
  redis.call('HSET', jk(job, 'robots'), host, 'probing')
  redis.call('ZADD', P .. ':due', num(now + timeout), due_member(job, id))
  redis.call('HINCRBY', jk(job, 'flight'), host, 1)
  redis.call('HINCRBY', P .. ':flight', host, 1)
  for _, field in ipairs({id, job, url, tostring(attempt), tostring(ROBOTS_TIMEOUT), num(wall),
                          '', '', 'robots ' .. host}) do
    out[#out + 1] = field
  end
  return true
end

local SPAN_SECONDS = 5.0 -- about how long a paced span lasts (fetchq/server/jobqueue.py)

-- A paced aggregate job's next span, in rounds of spans side by side that share the
-- job's rate (``Rounds`` in fetchq/server/jobqueue.py, in the same terms): span n of a
-- round of ``width`` starts n / rate after the round does, its requests width / rate
-- apart; the next round starts where the longest span of this one ends.
local function take_paced_span(job, rate, fresh, queued, worker, now, offset, timeout,
                               server, out)
  local meta = jk(job, 'meta')
  local kept = redis.call('HMGET', meta, 'r_start', 'r_end', 'r_rate', 'r_width', 'r_given')
  local start, finish = tonumber(kept[1]) or now, tonumber(kept[2]) or now
  local round_rate, width, given = tonumber(kept[3]) or 1, tonumber(kept[4]) or 0, tonumber(kept[5]) or 0
  if fresh == '1' then -- after a pause or an idle spell: a round half handed out is closed
    width, finish = given, math.max(finish, now)
  end
  local next_start = given < width and start + given / round_rate or finish
  local id, task
  if next_start <= now + LOOKAHEAD then id, task = next_task(job, jk(job, 'queue')) end
  if id then
    if given == width then
      local lanes = math.max(1, math.ceil(rate * SPAN_SECONDS / task[4]))
      start, round_rate = finish, rate
      width, given = math.min(lanes, queued), 0 -- itself and those waiting behind it
    end
    local first, spacing = start + given / round_rate, width / round_rate
    given = given + 1
    finish = math.max(finish, start + task[4] * spacing)
    grant(job, id, task, range_of(tonumber(id)), worker, first, now, offset, timeout, out)
    out[#out] = 'span ' .. num(spacing)
    unqueued(job, 1)
    redis.call('HINCRBY', meta, 'req_leased', task[4])
    server.span_job = job
  end
  redis.call('HSET', meta, 'r_start', num(start), 'r_end', num(finish), 'r_rate', num(round_rate),
             'r_width', width, 'r_given', given, 'fresh', 0)
  return id and 1 or 0
end

-- Up to ``allowed`` of one job's queued tasks, leased to ``worker``; returns how many.
-- A paced job's starts are ``1 / rate`` apart on one schedule for the whole fleet
-- (``next_slot``); a job with host limits takes its hosts in turn, each within its
-- cap (requests in flight) and its delay (between two starts).
local function take(job, allowed, worker, now, offset, timeout, server, out)
  local meta = jk(job, 'meta')
  local state, queued, policy, next_slot, fresh, by_host, aggregate, anchor, index, limiting =
    unpack(redis.call('HMGET', meta, 'state', 'queued', 'policy', 'next_slot', 'fresh',
                      'by_host', 'aggregate', 'anchor', 'index', 'limiting'))
  if state ~= '' or tonumber(queued) <= 0 then return 0 end
  if limiting and tonumber(limiting) > now then return 0 end -- (``limit_hosts``)
  if aggregate == '1' then
    -- Spans go only to a worker that runs them, from one job a call: the first, then
    -- as many more as ``allowed`` requests hold, each counted as big as the first; a
    -- paced job's alone, in rounds (``take_paced_span``).
    if not server.spans or server.span_job then return 0 end
    local rate = cjson.decode(policy).rate
    if rate ~= cjson.null then
      return take_paced_span(job, rate, fresh, tonumber(queued), worker, now, offset, timeout,
                             server, out)
    end
    local id, task = next_task(job, jk(job, 'queue'))
    if not id then return 0 end
    local more, range, requests = math.floor(server.room / task[4]) - 1, nil, 0
    local taken = 0
    while id do
      range = range_for(id, range)
      grant(job, id, task, range, worker, nil, now, offset, timeout, out)
      taken, requests = taken + 1, requests + task[4]
      if taken > more then break end
      id, task = next_task(job, jk(job, 'queue'))
    end
    unqueued(job, taken)
    redis.call('HINCRBY', meta, 'req_leased', requests)
    server.span_job = job
    return taken
  end
  policy = cjson.decode(policy)
  local rate = policy.rate
  if rate == cjson.null then rate = nil end
  local slot = tonumber(next_slot)
  local horizon = now + LOOKAHEAD
  local plan = policy.stages ~= nil and policy.stages ~= cjson.null and stage_plan(policy.stages)
  local starts -- the start of the k-th task taken now (from 0), on a paced job
  if plan then -- staged: the stages begin at the job's first lease (its anchor)
    anchor, index = tonumber(anchor), tonumber(index) or 0
    if fresh == '1' then
      if not anchor then
        anchor, index = now, 0
        slot = now + start_of(plan, 0)
      elseif now > slot then -- after a pause or an idle spell the stages go on
        anchor, slot = anchor + (now - slot), now
      end
    end
    starts = function(k) return k == 0 and slot or anchor + start_of(plan, index + k) end
    local due = 0
    while due < allowed and starts(due) <= horizon do due = due + 1 end
    allowed = due
  elseif rate then
    if fresh == '1' then slot = math.max(slot, now) end
    if slot > horizon then return 0 end
    allowed = math.min(allowed, math.floor((horizon - slot) * rate) + 1)
    starts = function(k) return slot + k / rate end
  end
  if allowed <= 0 then return 0 end
  local taken, probed, range = 0, 0, nil
  if by_host ~= '1' then
    local held, dues = {}, {}
    while taken < allowed do -- a queue's ids of tasks done already are dropped as met
      local ids = redis.call('LPOP', jk(job, 'queue'), math.min(allowed - taken, CHUNK))
      if not ids then break end
      local raws = redis.call('HMGET', jk(job, 'tasks'), unpack(ids))
      for k, id in ipairs(ids) do
        if raws[k] then
          local task = cjson.decode(raws[k])
          range = range_for(id, range)
          local start = starts and starts(taken)
          held[#held + 1], held[#held + 2] = id, worker
          dues[#dues + 1] = num((start and math.max(now, start) or now) + timeout)
          dues[#dues + 1] = due_member(job, id)
          record(out, job, id, task, range, start, offset)
          taken = taken + 1
        end
      end
    end
    chunked('HSET', jk(job, 'holders'), held)
    chunked('ZADD', P .. ':due', dues)
    if plan then
      index = index + taken
      slot = anchor + start_of(plan, index)
    elseif rate then
      slot = slot + taken / rate
    end
  else
    local cap = policy.per_host
    if cap == cjson.null then cap = nil end
    local delay = tonumber(policy.host_delay) or 0
    local ring, flight, last = jk(job, 'ring'), jk(job, 'flight'), jk(job, 'last')
    local robots = policy.obey_robots == true
    for _ = 1, math.min(redis.call('LLEN', ring), MAX_HOST_VISITS) do
      if taken + probed >= allowed then break end
      local host = redis.call('LPOP', ring)
      if not host then break end
      local queue = jk(job, 'hq:' .. host)
      local room = allowed - taken - probed
      local rules = robots and redis.call('HGET', jk(job, 'robots'), host)
      if robots and not rules then -- its robots.txt first, alone, before any task of it
        if probe_host(job, host, queue, worker, now, now + offset, timeout, out) then
          probed = probed + 1
        end
        room = 0
      elseif rules == 'probing' then
        room = 0
      end
      local host_delay = delay
      if rules == 'known' then -- with its Crawl-delay, if longer
        host_delay = math.max(delay, tonumber(redis.call('HGET', jk(job, 'crawl'), host) or '0'))
      end
      if cap then room = math.min(room, cap - tonumber(redis.call('HGET', flight, host) or '0')) end
      if server.cap then
        room = math.min(room, server.cap - tonumber(redis.call('HGET', P .. ':flight', host) or '0'))
      end
      local host_at = now
      local spaced = host_delay > 0 or server.delay > 0
      if spaced then
        room = math.min(room, 1) -- one start a visit: the next waits for its delay
        host_at = math.max(now, tonumber(redis.call('HGET', last, host) or '-inf') + host_delay,
                           tonumber(redis.call('HGET', P .. ':last', host) or '-inf') + server.delay)
      end
      local held = tonumber(redis.call('HGET', jk(job, 'held'), host) or '-inf') -- Retry-After
      if held > now then spaced, host_at = true, math.max(host_at, held) end
      if host_at > horizon then room = 0 end
      local got = 0
      while got < room do
        local start = nil
        if rate then
          start = math.max(slot, host_at)
          if start > horizon then break end
        elseif spaced then
          start = host_at
        end
        local id, task = next_task(job, queue)
        if not id then break end
        range = range_for(id, range)
        grant(job, id, task, range, worker, start, now, offset, timeout, out)
        if rules == 'known' then out[#out] = 'check' end -- against the host's robots.txt
        got = got + 1
        if plan then -- held back by the host: the first slot after it, no burst
          slot, index = slot_after(plan, anchor, start, index)
        elseif rate then
          slot = start + 1 / rate
        end
        if start then
          redis.call('HSET', last, host, num(start))
          redis.call('HSET', P .. ':last', host, num(start))
        end
      end
      taken = taken + got
      if got > 0 then
        redis.call('HINCRBY', flight, host, got)
        redis.call('HINCRBY', P .. ':flight', host, got)
      end
      if redis.call('LLEN', queue) > 0 then
        redis.call('RPUSH', ring, host)
      else
        redis.call('HDEL', jk(job, 'hosts'), host)
      end
    end
  end
  if taken > 0 then
    unqueued(job, taken)
    redis.call('HSET', meta, 'next_slot', num(slot), 'fresh', 0)
    if plan then redis.call('HSET', meta, 'anchor', num(anchor), 'index', index) end
  end
  return taken + probed
end

-- lease(now, wall, worker, count, lease_timeout, max_results, server_cap,
-- server_delay, spans): flat records, 9 fields each (see ``grant``); the server's
-- per-host cap ('' for none) and delay hold for every job together; ``spans`` 0 when
-- the call has had an aggregate job's spans from another shard.  Jobs take turns: each an
-- equal share of what is asked, round after round.
local function lease(keys, args)
  local now, wall = clocks(args[1], args[2])
  local worker, want, timeout = args[3], tonumber(args[4]), tonumber(args[5])
  expire(now, wall)
  local w, spans = seen(worker, now), false
  for _, kind in ipairs(w.runs) do spans = spans or kind == 'span' end
  spans = spans and args[9] ~= '0'
  keep_worker(worker, w)
  local out = {}
  if tonumber(redis.call('GET', P .. ':queued') or '0') <= 0 then return out end
  if tonumber(redis.call('GET', P .. ':unconfirmed') or '0') >= tonumber(args[6]) then return out end
  local jobs = redis.call('ZRANGE', P .. ':active', 0, -1)
  local turn = redis.call('GET', P .. ':turn')
  local after = 0
  for i, job in ipairs(jobs) do if job == turn then after = i end end
  local order = {}
  for k = 1, #jobs do order[k] = jobs[(after + k - 1) % #jobs + 1] end
  local offset, taken, last = wall - now, 0, nil
  local server = {cap = tonumber(args[7]), delay = tonumber(args[8]), spans = spans}
  while taken < want do
    local share = math.ceil((want - taken) / #order)
    local progressed = false
    for _, job in ipairs(order) do
      if taken >= want then break end
      server.room = want - taken -- an aggregate job's spans fill it all (they are few)
      local got = take(job, math.min(share, want - taken), worker, now, offset, timeout, server, out)
      if got > 0 then progressed, last, taken = true, job, taken + got end
    end
    if not progressed then break end
  end
  if last then redis.call('SET', P .. ':turn', last) end
  return out
end

local HEAD = '^(-?%d+) (-?%d+) (%d)(%d)(%d)(%d) (%S+) (%S+) (%S+)(.*)$'

-- The reply of a ``complete`` whose aggregates do not count their spans' requests, or nil.
local function miscount(heads)
  local range = nil
  for line in string.gmatch(heads, '[^\n]+') do
    local id, _, _, _, _, a, _, _, _, rest = string.match(line, HEAD)
    if a == '1' then
      range = range_for(id, range)
      local raw = range and redis.call('HGET', jk(range.job, 'tasks'), id)
      local task = raw and cjson.decode(raw)
      local good, bad = string.match(rest, '^ (%d+) (%d+)')
      if task and task[4] and tonumber(good) + tonumber(bad) ~= task[4] then
        return {'miscount', id, tostring(tonumber(good) + tonumber(bad)), tostring(task[4])}
      end
    end
  end
  return nil
end

-- complete(now, wall, worker, lease_timeout, nresults, heads, raw..., [id, attempt]...):
-- ``heads`` has a line a result, ``id attempt RWOA late elapsed hold`` (R retryable,
-- W a 429 or 503, O ok, A an aggregate: 0 or 1 each; late, elapsed, and the wait its
-- Retry-After asks for, in seconds, or -),
-- and for an aggregate `` ok failed late worst`` (its requests that succeeded and
-- failed, started late, and the latest start's lateness); its text among the ``raw``
-- arguments in the same order.  An aggregate that does not count its span's requests
-- changes nothing, and the reply is ``miscount id counted expected``.
local function complete(keys, args)
  local now, wall = clocks(args[1], args[2])
  local worker, timeout, nresults = args[3], tonumber(args[4]), tonumber(args[5])
  expire(now, wall)
  local wrong = miscount(args[6]) -- first: each aggregate counts its span
  if wrong then return wrong end
  local accepted, requeued, dropped, renewed = 0, 0, 0, 0
  local batches, finished, range, obeys = {}, {}, nil, {}
  local i = 0
  for line in string.gmatch(args[6], '[^\n]+') do
    i = i + 1
    local id, attempt, r, w, o, a, late, elapsed, hold, rest = string.match(line, HEAD)
    attempt = tonumber(attempt)
    local retryable, ok, raw_text = r == '1', o == '1', args[6 + i]
    local good, bad, late_count, worst = string.match(rest, '^ (%d+) (%d+) (%d+) (%S+)$')
    range = range_for(id, range)
    local raw = range and not finished[id] and redis.call('HGET', jk(range.job, 'tasks'), id)
    local task = raw and cjson.decode(raw)
    if not raw or (task[4] ~= nil) ~= (a == '1') then
      dropped = dropped + 1 -- a repeat, a task never submitted here; a span answered by
      -- anything but an aggregate, or an aggregate for anything but a span
    else
      local job = range.job
      local meta = jk(job, 'meta')
      local holder = redis.call('HGET', jk(job, 'holders'), id)
      local current = holder and task[1] == attempt
      local wait = 0 -- a 429 or 503 asking to wait, in a job that obeys Retry-After
      if w == '1' and hold ~= '-' and task[3] then
        if obeys[job] == nil then
          obeys[job] = cjson.decode(redis.call('HGET', meta, 'policy')).retry_after == true
        end
        if obeys[job] then wait = tonumber(hold) end
      end
      local outcome
      if retryable and not current then
        outcome = 'dropped' -- a stale attempt
      elseif (retryable or wait > 0) and current and attempt < range.attempts
          and redis.call('HGET', meta, 'state') ~= 'cancelled' then
        outcome = 'requeued'
      else
        outcome = 'accepted'
      end
      if a == '1' and outcome == 'accepted' and late_count ~= '0' then
        late = worst -- an aggregate tells its own late starts
      else
        late_count = '1'
      end
      if outcome ~= 'dropped' and late ~= '-' then
        redis.call('HINCRBY', meta, 'late', late_count)
        if tonumber(late) > tonumber(redis.call('HGET', meta, 'worst_late')) then
          redis.call('HSET', meta, 'worst_late', late)
        end
      end
      if outcome == 'dropped' then
        dropped = dropped + 1
      elseif outcome == 'requeued' then
        if wait > 0 then -- no start on the host before then
          local until_then = now + wait
          local held = tonumber(redis.call('HGET', jk(job, 'held'), task[3]) or '-inf')
          if until_then > held then redis.call('HSET', jk(job, 'held'), task[3], num(until_then)) end
        end
        end_lease(job, id, task)
        task[1] = task[1] + 1
        queue_again(job, id, task, true)
        redis.call('PUBLISH', CHANNEL_TASKS, 1)
        requeued = requeued + 1
      else -- written below, a job at a time
        local batch = batches[job]
        if not batch then
          batch = {ids = {}, values = {}, held = {}, dues = {}, hosts = {}, ok = 0, failed = 0,
                   queued = 0, elapsed = 0, timed = 0, requests_ok = 0, requests_failed = 0,
                   requests_held = 0}
          batches[job] = batch
        end
        batch.ids[#batch.ids + 1] = id
        batch.values[#batch.values + 1] = id
        batch.values[#batch.values + 1] = a == '1' and '@' .. raw_text or raw_text
        if a == '1' then
          batch.requests_ok = batch.requests_ok + tonumber(good)
          batch.requests_failed = batch.requests_failed + tonumber(bad)
        end
        if holder then
          batch.held[#batch.held + 1] = id
          batch.dues[#batch.dues + 1] = due_member(job, id)
          if task[3] then batch.hosts[task[3]] = (batch.hosts[task[3]] or 0) + 1 end
          if task[4] then batch.requests_held = batch.requests_held + task[4] end
        else
          batch.queued = batch.queued + 1
        end
        if elapsed ~= '-' then -- an aggregate's is the sum over its requests
          local weight = a == '1' and tonumber(good) + tonumber(bad) or 1
          batch.elapsed, batch.timed = batch.elapsed + tonumber(elapsed), batch.timed + weight
        end
        if ok then batch.ok = batch.ok + 1 else batch.failed = batch.failed + 1 end
        finished[id] = true
        accepted = accepted + 1
      end
    end
  end
  for job, batch in pairs(batches) do
    local meta = jk(job, 'meta')
    chunked('HDEL', jk(job, 'tasks'), batch.ids)
    chunked('HDEL', jk(job, 'holders'), batch.held)
    chunked('ZREM', P .. ':due', batch.dues)
    for host, count in pairs(batch.hosts) do
      redis.call('HINCRBY', jk(job, 'flight'), host, -count)
      redis.call('HINCRBY', P .. ':flight', host, -count)
    end
    if batch.queued > 0 then unqueued(job, batch.queued) end
    chunked('RPUSH', jk(job, 'results'), batch.ids)
    chunked('HSET', jk(job, 'result'), batch.values)
    if batch.ok > 0 then redis.call('HINCRBY', meta, 'succeeded', batch.ok) end
    if batch.failed > 0 then redis.call('HINCRBY', meta, 'failed', batch.failed) end
    if batch.requests_ok + batch.requests_failed > 0 then
      redis.call('HINCRBY', meta, 'req_succeeded', batch.requests_ok)
      redis.call('HINCRBY', meta, 'req_failed', batch.requests_failed)
      if batch.requests_held > 0 then -- (Lua's -0 is no integer to the store)
        redis.call('HINCRBY', meta, 'req_leased', -batch.requests_held)
      end
    end
    redis.call('INCRBY', P .. ':unconfirmed', #batch.ids)
    redis.call('PUBLISH', CHANNEL_RESULTS, job)
    pace_seen(job, now, #batch.ids, batch.requests_ok + batch.requests_failed, batch.elapsed)
  end
  for p = 7 + nresults, #args - 1, 2 do
    local id, attempt = args[p], tonumber(args[p + 1])
    local range = range_of(tonumber(id))
    if range then
      local job = range.job
      local raw = redis.call('HGET', jk(job, 'tasks'), id)
      if raw and redis.call('HGET', jk(job, 'holders'), id) == worker
          and cjson.decode(raw)[1] == attempt then
        redis.call('ZADD', P .. ':due', 'XX', 'GT', num(now + timeout), due_member(job, id))
        renewed = renewed + 1
      end
    end
  end
  note_worker(worker, now, accepted + requeued)
  return {accepted, requeued, dropped, renewed}
end

-- The end of a robots.txt fetch's lease: its host has one request fewer in flight.
local function end_probe(job, id, host)
  redis.call('HDEL', jk(job, 'probes'), id)
  redis.call('HDEL', P .. ':probe_jobs', id)
  redis.call('ZREM', P .. ':due', due_member(job, id))
  redis.call('HINCRBY', jk(job, 'flight'), host, -1)
  redis.call('HINCRBY', P .. ':flight', host, -1)
end

-- release(now, wall, worker, max_results, [id, attempt]...)
local function release(keys, args)
  local now, wall = clocks(args[1], args[2])
  local worker = args[3]
  note_worker(worker, now)
  local released, returned = 0, {}
  for p = #args - 1, 5, -2 do
    local id, attempt = args[p], tonumber(args[p + 1])
    local range = not returned[id] and range_of(tonumber(id))
    local job = string.sub(id, 1, 1) == '-' and redis.call('HGET', P .. ':probe_jobs', id)
    if job then -- a robots.txt fetch handed back: asked again
      local probe = cjson.decode(redis.call('HGET', jk(job, 'probes'), id))
      if probe.attempt == attempt then
        end_probe(job, id, probe.host)
        redis.call('HDEL', jk(job, 'robots'), probe.host)
        returned[id] = true
        released = released + 1
      end
    elseif range then
      local job = range.job
      local raw = redis.call('HGET', jk(job, 'tasks'), id)
      local task = raw and cjson.decode(raw)
      if task and redis.call('HGET', jk(job, 'holders'), id) == worker and task[1] == attempt then
        end_lease(job, id, task)
        queue_again(job, id, task, true)
        returned[id] = true
        released = released + 1
      end
    end
  end
  if released > 0 then redis.call('PUBLISH', CHANNEL_TASKS, released) end
  end_cancelled(wall, tonumber(args[4]) - tonumber(redis.call('GET', P .. ':unconfirmed') or '0'))
  return released
end

-- robots(now, wall, worker, id, attempt, verdict, report, crawl_delay): a worker
-- fetched a host's robots.txt.  ``verdict`` ``again``: the site could not say, ask
-- again; ``learn``: keep ``report`` (what the server reads the rules from) and the
-- host's Crawl-delay ('' for none), the host's delay counting from now.  0 for a
-- fetch whose lease had lapsed (asked again of someone else).
local function robots(keys, args)
  local now, wall = clocks(args[1], args[2])
  local worker = args[3]
  local id, attempt, verdict = args[4], tonumber(args[5]), args[6]
  note_worker(worker, now)
  local job = redis.call('HGET', P .. ':probe_jobs', id)
  local raw = job and redis.call('HGET', jk(job, 'probes'), id)
  if not raw then return 0 end
  local probe = cjson.decode(raw)
  if probe.attempt ~= attempt then return 0 end
  end_probe(job, id, probe.host)
  if verdict == 'again' then
    redis.call('HDEL', jk(job, 'robots'), probe.host)
  else
    redis.call('HSET', jk(job, 'robots'), probe.host, 'known')
    redis.call('HSET', jk(job, 'rules'), probe.host, args[7])
    if args[8] ~= '' then redis.call('HSET', jk(job, 'crawl'), probe.host, args[8]) end
    local last = tonumber(redis.call('HGET', jk(job, 'last'), probe.host) or '-inf')
    if now > last then redis.call('HSET', jk(job, 'last'), probe.host, num(now)) end
  end
  redis.call('PUBLISH', CHANNEL_TASKS, 1)
  return 1
end

-- refuse(now, wall, worker, job, kind, message, ids...): tasks leased to ``worker``
-- that the host's robots.txt forbids end as results of error ``kind``, with no request.
local function refuse(keys, args)
  local wall, worker, job, kind, message = clock(args[2]), args[3], args[4], args[5], args[6]
  local range = nil
  for i = 7, #args do
    local id = args[i]
    local raw = redis.call('HGET', jk(job, 'tasks'), id)
    if raw and redis.call('HGET', jk(job, 'holders'), id) == worker then
      local task = cjson.decode(raw)
      range = range_for(id, range)
      end_lease(job, id, task)
      finish(job, id, ended(kind, message, 'server', task, wall, range, job), false)
    end
  end
  return 0
end

local function ack_token(token)
  local raw = redis.call('HGET', P .. ':deliveries', token)
  if not raw then return 0 end
  local delivery = cjson.decode(raw)
  local total = 0
  for _, part in ipairs(delivery.jobs) do
    local job, ids = part[1], part[2]
    redis.call('HINCRBY', jk(job, 'meta'), 'handed_out', -#ids)
    redis.call('HINCRBY', jk(job, 'meta'), 'confirmed', #ids)
    chunked('HDEL', jk(job, 'result'), ids)
    redis.call('PUBLISH', CHANNEL_RESULTS, job)
    total = total + #ids
  end
  redis.call('DECRBY', P .. ':unconfirmed', total)
  redis.call('HDEL', P .. ':deliveries', token)
  redis.call('ZREM', P .. ':delivery_due', token)
  redis.call('PUBLISH', CHANNEL_TASKS, 0) -- leasing may have waited for room
  return total
end

local function all_confirmed(job)
  local jobs = job ~= '' and {job} or redis.call('ZRANGE', P .. ':jobs', 0, -1)
  local any = false
  for _, name in ipairs(jobs) do
    local meta = jk(name, 'meta')
    if redis.call('EXISTS', meta) == 0 or not job_done(meta) then return false end
    any = true
  end
  return any
end

-- results(now, wall, job, count, lease_timeout, ack, token): 'results' and job, id,
-- value triples; 'done'; or 'none'.
local function results(keys, args)
  local now, wall = clocks(args[1], args[2])
  local job, want, timeout = args[3], tonumber(args[4]), tonumber(args[5])
  if args[6] ~= '' then ack_token(args[6]) end
  expire(now, wall)
  local jobs = job ~= '' and {job} or redis.call('ZRANGE', P .. ':jobs', 0, -1)
  local out, parts, taken = {'results', args[7]}, {}, 0
  for _, name in ipairs(jobs) do
    if taken >= want then break end
    local list = jk(name, 'results')
    local ids = redis.call('LRANGE', list, 0, want - taken - 1)
    if #ids > 0 then
      redis.call('LTRIM', list, #ids, -1)
      local values = {}
      for i = 1, #ids, CHUNK do
        local part = redis.call('HMGET', jk(name, 'result'), unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
        for _, value in ipairs(part) do values[#values + 1] = value end
      end
      for i, id in ipairs(ids) do
        out[#out + 1] = name
        out[#out + 1] = id
        out[#out + 1] = values[i]
      end
      redis.call('HINCRBY', jk(name, 'meta'), 'handed_out', #ids)
      parts[#parts + 1] = {name, ids}
      taken = taken + #ids
    end
  end
  if taken == 0 then
    if all_confirmed(job) then return {'done'} end
    return {'none'}
  end
  local sequence = redis.call('INCR', P .. ':delivery_seq')
  local deadline = num(now + timeout)
  redis.call('HSET', P .. ':deliveries', args[7], cjson.encode({s = sequence, jobs = parts}))
  redis.call('ZADD', P .. ':delivery_due', deadline, args[7])
  return out
end

-- ack(token)
local function ack(keys, args)
  return ack_token(args[1])
end

-- job(now, wall, job): its counters, or nothing for a job never heard of.
local function job_counts(keys, args)
  expire(clocks(args[1], args[2]))
  if redis.call('EXISTS', jk(args[3], 'meta')) == 0 then return {} end
  return counts(args[3])
end

-- status(now, wall): unconfirmed, then each job's counters, then the workers.
local function status(keys, args)
  local now, wall = clocks(args[1], args[2])
  expire(now, wall)
  local out = {num(now), redis.call('GET', P .. ':unconfirmed') or '0'}
  local jobs = redis.call('ZRANGE', P .. ':jobs', 0, -1)
  out[#out + 1] = #jobs
  for _, job in ipairs(jobs) do out[#out + 1] = counts(job) end
  local workers = redis.call('HGETALL', P .. ':workers')
  local holding = {}
  for _, job in ipairs(jobs) do
    local held = redis.call('HVALS', jk(job, 'holders'))
    for _, worker in ipairs(held) do holding[worker] = (holding[worker] or 0) + 1 end
  end
  for i = 1, #workers, 2 do
    local w = seen(workers[i], tonumber(cjson.decode(workers[i + 1]).last))
    local recent = 0
    for second, count in pairs(w.recent) do
      if tonumber(second) >= now - RATE_WINDOW then recent = recent + count end
    end
    out[#out + 1] = {workers[i], w.first, w.last, w.reported, w.threads, recent, holding[workers[i]] or 0}
  end
  return out
end

local HOSTS_WAIT = 10 -- seconds a job leases nothing while its leased tasks' hosts are asked

-- A job's first host limits: from now on its tasks wait per host.  Its leased tasks
-- count in flight on their hosts at once, as if leased under the limits: ``hosts``
-- maps each's id to its host, and the reply is false, changing nothing, when one is
-- missing (the job stopped leasing when they were asked, but not for long: see
-- ``steer``).  Its queued tasks wait in their queue until sorted, a page a call
-- (``sort``).
local function limit_hosts(job, hosts)
  local leased = redis.call('HKEYS', jk(job, 'holders'))
  for _, id in ipairs(leased) do
    if not hosts[id] then return false end
  end
  for _, id in ipairs(leased) do
    local raw = redis.call('HGET', jk(job, 'tasks'), id)
    if raw then
      local task, host = cjson.decode(raw), hosts[id]
      task[3] = host
      redis.call('HSET', jk(job, 'tasks'), id, cjson.encode(task))
      redis.call('HINCRBY', jk(job, 'flight'), host, 1)
      redis.call('HINCRBY', P .. ':flight', host, 1)
    end
  end
  redis.call('HSET', jk(job, 'meta'), 'by_host', 1)
  redis.call('HDEL', jk(job, 'meta'), 'limiting')
  return true
end

-- The id, URL pairs of a job's leased tasks (whose hosts ``limit_hosts`` needs).
local function leased_urls(job)
  local out = {}
  for _, id in ipairs(redis.call('HKEYS', jk(job, 'holders'))) do
    local raw = redis.call('HGET', jk(job, 'tasks'), id)
    if raw then out[#out + 1], out[#out + 2] = id, cjson.decode(raw)[2] end
  end
  return out
end

local SORT_PAGE = 1000 -- queued tasks sorted by host a call

-- unsorted(job): the id, URL pairs at the head of the queue of a job that got its
-- first host limits while it ran (a URL '' for an id no longer queued).
local function unsorted(keys, args)
  local job = args[1]
  local ids = redis.call('LRANGE', jk(job, 'queue'), 0, SORT_PAGE - 1)
  if #ids == 0 then return {} end
  local raws = redis.call('HMGET', jk(job, 'tasks'), unpack(ids))
  local out = {}
  for i, id in ipairs(ids) do
    out[#out + 1], out[#out + 2] = id, raws[i] and cjson.decode(raws[i])[2] or ''
  end
  return out
end

-- sort(job, [id, host]...): the head of the job's queue, as far as those ids go, to
-- their hosts' queues in order (ids of tasks done or leased are dropped); the tasks
-- left unsorted.
local function sort(keys, args)
  local job = args[1]
  local hosts = {}
  for p = 2, #args - 1, 2 do hosts[args[p]] = args[p + 1] end
  local queue, tasks = jk(job, 'queue'), jk(job, 'tasks')
  local ids = {}
  for _, id in ipairs(redis.call('LRANGE', queue, 0, SORT_PAGE - 1)) do
    if not hosts[id] then break end
    ids[#ids + 1] = id
  end
  if #ids == 0 then return redis.call('LLEN', queue) end
  redis.call('LTRIM', queue, #ids, -1)
  local raws = redis.call('HMGET', tasks, unpack(ids))
  local held = redis.call('HMGET', jk(job, 'holders'), unpack(ids))
  local fields, by_host, order, seen = {}, {}, {}, {}
  for i, id in ipairs(ids) do
    if raws[i] and not held[i] and not seen[id] then
      local task, host = cjson.decode(raws[i]), hosts[id]
      task[3], seen[id] = host, true
      fields[#fields + 1], fields[#fields + 2] = id, cjson.encode(task)
      if not by_host[host] then by_host[host], order[#order + 1] = {}, host end
      by_host[host][#by_host[host] + 1] = id
    end
  end
  chunked('HSET', tasks, fields)
  for _, host in ipairs(order) do
    chunked('RPUSH', jk(job, 'hq:' .. host), by_host[host])
    if redis.call('HSETNX', jk(job, 'hosts'), host, 1) == 1 then
      redis.call('RPUSH', jk(job, 'ring'), host)
    end
  end
  return redis.call('LLEN', queue)
end

-- Jobs with tasks queued but not yet sorted by host (``sort`` sorts them).
local function unsorted_jobs()
  local jobs = {}
  for _, job in ipairs(redis.call('ZRANGE', P .. ':active', 0, -1)) do
    if redis.call('HGET', jk(job, 'meta'), 'by_host') == '1'
        and redis.call('LLEN', jk(job, 'queue')) > 0 then
      jobs[#jobs + 1] = job
    end
  end
  return jobs
end

-- steer(now, wall, job, action, change, max_results, done, hosts, [id, host]...): the
-- job's counters after.  ``done``: whether the whole job is done, '1' or '0' ('-': as
-- this shard's part is), for a done job is neither paused nor cancelled, while a part
-- done in one shard is, with the rest.  A change that gives a job its first host
-- limits needs the hosts of its leased tasks: without them (``hosts`` not 'hosts') the
-- job stops leasing for a while, and the reply is 'by_host' and their id, URL pairs;
-- the same change sent again with their hosts makes it.
local function steer(keys, args)
  local now, wall = clocks(args[1], args[2])
  local job, action = args[3], args[4]
  local meta = jk(job, 'meta')
  if redis.call('EXISTS', meta) == 0 then return {} end
  if action == 'set' then
    local policy = cjson.decode(redis.call('HGET', meta, 'policy'))
    local change = cjson.decode(args[5])
    for name, value in pairs(change) do policy[name] = value end
    if redis.call('HGET', meta, 'aggregate') == '1' then
      for name, value in pairs(change) do
        if name ~= 'rate' and value ~= cjson.null and value ~= false and value ~= 0 then
          return {'aggregate', name} -- an aggregate job takes a rate, but no politeness
        end
      end
    end
    if limits_hosts(policy) and redis.call('HGET', meta, 'by_host') ~= '1' then
      local hosts = {}
      for p = 9, #args - 1, 2 do hosts[args[p]] = args[p + 1] end
      if args[8] ~= 'hosts' or not limit_hosts(job, hosts) then
        redis.call('HSET', meta, 'limiting', num(now + HOSTS_WAIT))
        return {'by_host', unpack(leased_urls(job))}
      end
    end
    redis.call('HSET', meta, 'policy', cjson.encode(policy))
    if change.stages ~= nil and change.stages ~= cjson.null then -- they start at the next lease
      redis.call('HDEL', meta, 'anchor', 'index')
      redis.call('HSET', meta, 'fresh', 1)
    end
  elseif args[7] == '0' or (args[7] == '-' and not job_done(meta)) then
    local state = redis.call('HGET', meta, 'state')
    if action == 'cancel' then
      redis.call('HSET', meta, 'state', 'cancelled')
    elseif state ~= 'cancelled' then
      redis.call('HSET', meta, 'state', action == 'pause' and 'paused' or '')
      if action == 'resume' then redis.call('HSET', meta, 'fresh', 1) end
    end
  end
  if action == 'cancel' then
    end_cancelled(wall, tonumber(args[6]) - tonumber(redis.call('GET', P .. ':unconfirmed') or '0'))
  end
  redis.call('PUBLISH', CHANNEL_TASKS, 0)
  redis.call('PUBLISH', CHANNEL_RESULTS, job)
  return counts(job)
end

-- counted(heads): as ``complete`` would answer results of several shards whose
-- aggregates miscount their spans ('miscount' ...), or nothing; asked of each shard
-- before any takes them, so that such results change nothing anywhere.
local function counted(keys, args)
  return miscount(args[1]) or {}
end

-- add_specs(job, max_specs, [key, record]...): a batch's specs, kept in every shard of
-- a job spread over several ('specs' if more than ``max_specs`` in all, 'ok').
local function add_specs(keys, args)
  local specs = jk(args[1], 'specs')
  local new_specs = 0
  for p = 3, #args - 1, 2 do
    if redis.call('HEXISTS', specs, args[p]) == 0 then new_specs = new_specs + 1 end
  end
  if redis.call('HLEN', specs) + new_specs > tonumber(args[2]) then return 'specs' end
  for p = 3, #args - 1, 2 do redis.call('HSETNX', specs, args[p], args[p + 1]) end
  return 'ok'
end

-- specs(job, keys...): the records of those the job has.
local function specs(keys, args)
  local found = {}
  if #args < 2 then return found end
  local values = redis.call('HMGET', jk(args[1], 'specs'), unpack(args, 2))
  for _, value in ipairs(values) do if value then found[#found + 1] = value end end
  return found
end

-- clock(): the store's time (a Cluster's: the time of the node with fetchq's keys).
local function store_clock(keys, args)
  return num(clock())
end

local function queued(keys, args)
  return tonumber(redis.call('GET', P .. ':queued') or '0')
end

-- housekeeping(now, wall, max_results): lapsed leases and deliveries, cancelled tasks;
-- the count of leases lapsed, then the jobs whose tasks wait to be sorted by host.
local function housekeeping(keys, args)
  local now, wall = clocks(args[1], args[2])
  local lapsed = expire(now, wall)
  end_cancelled(wall, tonumber(args[3]) - tonumber(redis.call('GET', P .. ':unconfirmed') or '0'))
  return {lapsed, unpack(unsorted_jobs())}
end


local function in_shard(callback)
  return function(keys, args)
    P = keys[1]
    BASE = (tonumber(string.match(P, '^{fq:(%d+)}$')) or 0) * ID_SPAN
    return callback(keys, args)
  end
end
local function call(name, callback)
  redis.register_function{function_name = 'fq_' .. name, callback = in_shard(callback)}
end
local function read(name, callback)
  redis.register_function{function_name = 'fq_' .. name, callback = in_shard(callback),
                          flags = {'no-writes'}}
end
call('hello', hello)
call('submit', submit)
call('seal', seal)
call('create', create)
call('lease', lease)
call('complete', complete)
call('release', release)
call('results', results)
call('ack', ack)
call('job', job_counts)
call('status', status)
call('steer', steer)
call('robots', robots)
call('refuse', refuse)
call('housekeeping', housekeeping)
call('sort', sort)
read('specs', specs)
read('counted', counted)
call('add_specs', add_specs)
read('unsorted', unsorted)
read('queued', queued)
read('clock', store_clock)
