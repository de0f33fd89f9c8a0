-- wrk script for bench/flood.py: a spam flood from one address (X-Forwarded-For 203.0.113.66, which
-- `leadsync web` believes from 127.0.0.1): every other post fills the honeypot, the rest look like real
-- leads, each for a different victim's address, and go over the per-IP limit after its allowance.
-- Each thread stops after its share of the posts has been answered and says so on stderr; bench/flood.py
-- then interrupts wrk (SIGINT: it prints its report as at the end of -d).
--
--   wrk -t2 -c64 -d600s --latency -s bench/flood.lua http://127.0.0.1:8000 -- <run id> <posts per thread>
--
-- done() prints machine-readable lines (BENCH ...) after wrk's own report, as bench/overload.lua does.

local threads = {}
local next_id = 1

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   run = args[1] or "run"
   quota = tonumber(args[2] or "10000")
   n = 0
   answered = 0
   statuses = {}
   no_retry_after = 0
end

function request()
   n = n + 1
   local website = ""
   if n % 2 == 0 then website = "http%3A%2F%2Fspam.example" end
   local body = string.format(
      "email=flood-%s-%d-%d%%40example.org&first_name=Bot&interest=knee+pain&website=%s", run, tid, n, website)
   return wrk.format("POST", "/forms/info-packet", {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["Accept"] = "application/json",
      ["X-Forwarded-For"] = "203.0.113.66",
   }, body)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 503 and headers["Retry-After"] == nil and headers["retry-after"] == nil then
      no_retry_after = no_retry_after + 1
   end
   answered = answered + 1
   if answered == quota then
      -- wrk's main thread sleeps for the whole -d: bench/flood.py sends SIGINT once every thread said this
      io.stderr:write("BENCH quota_done\n")
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local total = {}
   local missing = 0
   for _, thread in ipairs(threads) do
      missing = missing + (thread:get("no_retry_after") or 0)
      for code, count in pairs(thread:get("statuses") or {}) do
         total[code] = (total[code] or 0) + count
      end
   end
   for code, count in pairs(total) do
      io.write(string.format("BENCH status %d %d\n", code, count))
   end
   io.write(string.format("BENCH no_retry_after %d\n", missing))
   local e = summary.errors
   io.write(string.format("BENCH summary requests=%d duration_us=%d connect=%d read=%d write=%d timeout=%d status=%d\n",
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status))
   for _, p in ipairs({50, 75, 90, 99, 99.9}) do
      io.write(string.format("BENCH latency_us p%s %d\n", p, latency:percentile(p)))
   end
   io.write(string.format("BENCH latency_us max %d\n", latency.max))
end
