-- proxy.lua: the wrk script of bench/proxy.sh (see it for the scenarios).
--
-- The request: POST /v1/chat/completions with a JSON body of exactly BENCH_BODY_BYTES bytes
-- (default 2048), "stream": true when BENCH_STREAM=1 (the event count comes from the
-- x-kvup-events header, given to wrk with -H). The request is built once (no request() function),
-- and there is no response() function, so wrk does not hand every response to Lua.
--
-- done() prints one line that bench/proxy.sh reads:
--   KVB requests=N duration_us=N rps=X p50_us=N p99_us=N errors=N status_errors=N bytes=N

local size = tonumber(os.getenv("BENCH_BODY_BYTES") or "2048")
local stream = os.getenv("BENCH_STREAM") == "1"

local head = '{"model":"kvup-bench","stream":' .. (stream and "true" or "false") ..
	',"max_tokens":64,"temperature":0,"messages":[' ..
	'{"role":"system","content":"You are a helpful assistant. Answer briefly."},' ..
	'{"role":"user","content":"'
local tail = '"}]}'
local words = "the quick brown fox jumps over the lazy dog and keeps running through the field "
local fill = size - #head - #tail
local text = string.rep(words, math.floor(fill / #words) + 1):sub(1, math.max(fill, 0))

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = head .. text .. tail
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"

function done(summary, latency, requests)
	local e = summary.errors
	local secs = summary.duration / 1e6
	io.write(string.format(
		"KVB requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d errors=%d status_errors=%d bytes=%d\n",
		summary.requests, summary.duration, summary.requests / secs, latency:percentile(50),
		latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status, summary.bytes))
end
