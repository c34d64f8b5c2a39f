-- wrk script: POST /v1/transfers/batch with SALDO_BENCH_BATCH transfers per request.
local num_accounts = tonumber(os.getenv("SALDO_BENCH_ACCOUNTS") or "1000")
local batch = tonumber(os.getenv("SALDO_BENCH_BATCH") or "1000")
local run = os.getenv("SALDO_BENCH_RUN") or tostring(os.time())
local threads = {}
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  thread_id = tid
  math.randomseed(os.time() + tid * 7919)
end

function request()
  local items = {}
  for i = 1, batch do
    counter = counter + 1
    local from = math.random(0, num_accounts - 1)
    local to = math.random(0, num_accounts - 2)
    if to >= from then to = to + 1 end
    items[i] = string.format(
      '{"id":"b%s-%d-%d","from":"acc-%d","to":"acc-%d","amount":"0.01","currency":"BRL"}',
      run, thread_id, counter, from, to)
  end
  local body = '{"transfers":[' .. table.concat(items, ",") .. ']}'
  return wrk.format("POST", "/v1/transfers/batch", {["Content-Type"] = "application/json"}, body)
end
