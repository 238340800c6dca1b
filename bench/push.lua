-- wrk script: POST a snappy Remote-Write 1.0 body, as Prometheus does.
-- BENCH_BODY names the body file; BENCH_DELAY_MS > 0 makes each connection
-- pause that long after every response (for the fixed-rate latency run);
-- BENCH_AUTH, if set, is sent as the Authorization header in place of
-- X-Scope-OrgID (as Prometheus with basic_auth does).
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/x-protobuf"
wrk.headers["Content-Encoding"] = "snappy"
wrk.headers["X-Prometheus-Remote-Write-Version"] = "0.1.0"
wrk.headers["User-Agent"] = "Prometheus/3.0.0"
wrk.headers["X-Scope-OrgID"] = "bench"
local auth = os.getenv("BENCH_AUTH") or ""
if auth ~= "" then
  wrk.headers["Authorization"] = auth
  wrk.headers["X-Scope-OrgID"] = nil
end

local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0
if pause > 0 then
  function delay()
    return pause
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
