-- wrk script of bench_api.py: statement reads for a random partner and month.
--
-- Arguments after "--": comma-separated partner ids, comma-separated months
-- (YYYY-MM), and a seed. Each wrk thread draws from its own generator seeded
-- with the seed and its thread number. A response counts as bad unless its
-- status is 200 and its body starts like a statement. done() prints one line
-- "bench_api_result " followed by a JSON object that bench_api.py parses.

local threads = {}

function setup(thread)
  thread:set("thread_number", #threads + 1)
  table.insert(threads, thread)
end

local function split(text)
  local items = {}
  for item in string.gmatch(text, "[^,]+") do
    items[#items + 1] = item
  end
  return items
end

function init(args)
  partners = split(args[1])
  months = split(args[2])
  math.randomseed(tonumber(args[3]) * 1000 + thread_number)
  bad = 0
  bad_example = ""
end

function request()
  local partner = partners[math.random(#partners)]
  local month = months[math.random(#months)]
  return wrk.format("GET", "/v1/partners/" .. partner .. "/statements/" .. month)
end

local STATEMENT_START = '{"partner_id":'

function response(status, headers, body)
  if status ~= 200 or string.sub(body, 1, #STATEMENT_START) ~= STATEMENT_START then
    bad = bad + 1
    if bad_example == "" then
      bad_example = status .. ": " .. string.sub(body, 1, 200)
    end
  end
end

local function json_string(text)
  return '"' .. string.gsub(text, '[%c"\\]', function(char)
    return string.format("\\u%04x", string.byte(char))
  end) .. '"'
end

function done(summary, latency, requests)
  local bad_total = 0
  local example = ""
  for _, thread in ipairs(threads) do
    bad_total = bad_total + thread:get("bad")
    if example == "" then
      example = thread:get("bad_example")
    end
  end
  local errors = summary.errors
  io.write(string.format(
    'bench_api_result {"requests":%d,"duration_us":%d,"bad_responses":%d,'
      .. '"bad_example":%s,"errors":{"connect":%d,"read":%d,"write":%d,'
      .. '"status":%d,"timeout":%d},"latency_us":{"mean":%.1f,"p50":%d,'
      .. '"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, bad_total, json_string(example),
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max
  ))
end
