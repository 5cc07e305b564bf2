-- wrk script for bench/ingest.py: cycles through pre-signed, distinct Twilio webhooks.
--
-- bench/ingest.py writes one request per line, "<X-Twilio-Signature>\t<form body>", signed
-- with twilio's own RequestValidator (there is no HMAC-SHA1 in LuaJIT). Each wrk thread loads
-- its own slice of the file at start-up (line i goes to thread i % threads) and builds the raw
-- HTTP requests once, so the hot loop only hands out pre-built strings.
--
-- Usage: wrk -s bench/ingest.lua URL -- REQUESTS_FILE PATH THREADS [PARTS PART]
-- With PARTS and PART (0-based), this wrk takes only the PART-th of PARTS disjoint slices of the
-- file (line i goes to thread i % threads of part (i // threads) % parts), so several wrk
-- processes at once never send the same request.
-- At the end it prints one line "BENCH_JSON {...}" that bench/ingest.py parses.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

function init(args)
   local file, path, nthreads = args[1], args[2], tonumber(args[3])
   local parts, part = tonumber(args[4] or "1"), tonumber(args[5] or "0")
   requests = {}
   sent = 0
   repeated = 0
   local index = 0
   for line in io.lines(file) do
      if index % (nthreads * parts) == part * nthreads + id then
         local tab = line:find("\t", 1, true)
         local headers = {
            ["Content-Type"] = "application/x-www-form-urlencoded",
            ["X-Twilio-Signature"] = line:sub(1, tab - 1),
            ["User-Agent"] = "TwilioProxy/1.1",
         }
         requests[#requests + 1] = wrk.format("POST", path, headers, line:sub(tab + 1))
      end
      index = index + 1
   end
   loaded = #requests
   if loaded == 0 then
      error("no requests for thread " .. id .. " in " .. file)
   end
end

function request()
   sent = sent + 1
   if sent > loaded then
      repeated = repeated + 1
   end
   return requests[(sent - 1) % loaded + 1]
end

function done(summary, latency, _)
   local sent_total, loaded_total, repeated_total = 0, 0, 0
   for _, thread in ipairs(threads) do
      sent_total = sent_total + thread:get("sent")
      loaded_total = loaded_total + thread:get("loaded")
      repeated_total = repeated_total + thread:get("repeated")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"sent": %d, "loaded": %d, "repeated": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
      .. '"non_2xx_3xx": %d, "timeouts": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      sent_total, loaded_total, repeated_total,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
