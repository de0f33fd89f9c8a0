-- wrk script for bench/overload.py: bench/post_form.lua's posts, plus a count of 503 answers that lack
-- Retry-After (a shed post must tell the client when to come back): "BENCH no_retry_after N".
--
--   wrk -t2 -c256 -d20s --latency -s bench/overload.lua http://127.0.0.1:8000 -- <run id>
--
-- The honeypot field `website` is sent empty, as a browser sends the hidden field. done() prints
-- machine-readable lines (BENCH ...) after wrk's own report: status counts summed over the threads, the
-- totals and the latency percentiles in microseconds.

local threads = {}
local next_id = 1

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   run = args[1] or "run"
   n = 0
   statuses = {}
   no_retry_after = 0
end

function request()
   n = n + 1
   local body = string.format(
      "email=lead-%s-%d-%d%%40example.org&first_name=Ann&last_name=Lee&phone=%%2B1+415+555+2671"
         .. "&interest=knee+pain&newsletter_opt_in=&website=",
      run, tid, n)
   return wrk.format("POST", "/forms/info-packet",
      {["Content-Type"] = "application/x-www-form-urlencoded", ["Accept"] = "application/json"}, body)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 503 and headers["Retry-After"] == nil and headers["retry-after"] == nil then
      no_retry_after = no_retry_after + 1
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
