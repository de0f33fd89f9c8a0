-- wrk script for bench/intake.py: POSTs a small urlencoded info-packet form, a distinct email per request
-- (lead-<run>-<thread>-<n>@example.org), and counts the answers by status.
--
--   wrk -t2 -c64 -d30s --latency -s bench/post_form.lua http://127.0.0.1:8000 -- <run id>
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
end

function done(summary, latency, requests)
   local total = {}
   for _, thread in ipairs(threads) do
      for code, count in pairs(thread:get("statuses") or {}) do
         total[code] = (total[code] or 0) + count
      end
   end
   for code, count in pairs(total) do
      io.write(string.format("BENCH status %d %d\n", code, count))
   end
   local e = summary.errors
   io.write(string.format("BENCH summary requests=%d duration_us=%d connect=%d read=%d write=%d timeout=%d status=%d\n",
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status))
   for _, p in ipairs({50, 75, 90, 99, 99.9}) do
      io.write(string.format("BENCH latency_us p%s %d\n", p, latency:percentile(p)))
   end
   io.write(string.format("BENCH latency_us max %d\n", latency.max))
end
