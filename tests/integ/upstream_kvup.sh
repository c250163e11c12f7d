#!/bin/sh
# upstream_kvup.sh: the test upstream itself (build/tests/kvup), driven directly with curl and raw
# connections, so that a failure in the proxy tests is the proxy's and not the simulator's.
. "$(dirname "$0")/lib.sh"

kv_start_kvup UP up1 --max-model-len 2048
U=http://127.0.0.1:$UP
R=$KV_TMP/r

# health, models, the name header
kv_eq "GET /health status" 200 "$(kv_curl "$R" "$U/health")"
kv_eq "GET /health body" '{"status":"ok"}' "$(cat "$R")"
kv_eq "x-kvup-name header" up1 "$(kv_header "$R.h" x-kvup-name)"
kv_curl "$R" "$U/v1/models" >/dev/null
kv_eq "/v1/models id and max_model_len" "up1 2048 list" \
	"$(kv_json "$R" 'j.data[0].id + " " + j.data[0].max_model_len + " " + j.object')"

# non-stream chat and completions
kv_curl "$R" "$U/v1/chat/completions" -H 'x-kvup-events: 3' -d '{"model":"m","messages":[]}' >/dev/null
kv_eq "chat.completion" "chat.completion|tok0 tok1 tok2 |stop|3|m" "$(kv_json "$R" \
	'[j.object, j.choices[0].message.content, j.choices[0].finish_reason, j.usage.completion_tokens, j.model].join("|")')"
kv_curl "$R" "$U/v1/completions" -H 'x-kvup-events: 1' -H 'x-kvup-pad: 5' -d '{"prompt":"x"}' >/dev/null
kv_eq "text_completion with pad" "text_completion|tok0 xxxxx" "$(kv_json "$R" 'j.object + "|" + j.choices[0].text')"
kv_eq "bad JSON -> 400" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -d '{"model":')"
kv_err "bad JSON" "$R" invalid_request_error
kv_eq "x-kvup-status 429" 429 "$(kv_curl "$R" "$U/v1/chat/completions" -H 'x-kvup-status: 429' -d '{}')"
kv_err "x-kvup-status" "$R" rate_limit_error

# streams: shape, include_usage, completions framing
kv_curl "$R" -N "$U/v1/chat/completions" -H 'x-kvup-events: 4' \
	-d '{"stream":true,"stream_options":{"include_usage":true}}' >/dev/null
kv_eq "stream content type" text/event-stream "$(kv_header "$R.h" content-type)"
kv_eq "chat stream shape" "assistant|tok0 tok1 tok2 tok3 |stop|4|true|true|true|true|0" "$(kv_sse "$R" \
	'[s.role_first, s.content, s.finish.join(), s.usage && s.usage.completion_tokens, s.done, s.same_id,
	  s.same_created, s.usage_null_before, s.bad.length].join("|")')"
kv_curl "$R" -N "$U/v1/completions" -H 'x-kvup-events: 2' -d '{"stream":true}' >/dev/null
kv_eq "completions stream" "tok0 tok1 |stop|null|true" "$(kv_sse "$R" \
	'[s.content, s.finish.join(), String(s.usage), s.done].join("|")')"

# echo
kv_curl "$R" "$U/v1/echo?a=1" -H 'X-Request-Id: abc' -H 'x-dup: 1' -H 'x-dup: 2' --data-binary 'raw body' >/dev/null
kv_eq "echo" "POST|/v1/echo?a=1|abc|1, 2|raw body" "$(kv_json "$R" \
	'[j.method, j.path, j.headers["x-request-id"], j.headers["x-dup"], j.body].join("|")')"
kv_curl "$R" "$U/v1/echo" -H 'Transfer-Encoding: chunked' --data-binary 'chunked body' >/dev/null
kv_eq "echo of a chunked body" "chunked body|chunked" "$(kv_json "$R" 'j.body + "|" + j.headers["transfer-encoding"]')"

# delay between events: the first event long before the last
t0=$(kv_now)
curl -sN "$U/v1/chat/completions" -H 'x-kvup-events: 4' -H 'x-kvup-delay-ms: 150' -d '{"stream":true}' |
	while IFS= read -r l; do [ -n "$l" ] && echo "$(($(kv_now) - t0))"; done >"$KV_TMP/times"
kv_le "first event (ms)" "$(head -n 1 "$KV_TMP/times")" 120
kv_ge "last event (ms)" "$(tail -n 1 "$KV_TMP/times")" 800

# die-after: K events then the connection ends with no terminating chunk
kv_curl "$R" -N "$U/v1/chat/completions" -H 'x-kvup-die-after: 2' -d '{"stream":true}' >/dev/null
kv_match "die-after: curl sees a cut transfer" "transfer closed|18|partial" "$(cat "$R.err")"
kv_eq "die-after: 2 events" 2 "$(grep -c '^data: ' "$R")"
kv_eq "streams_died" 1 "$(kv_stat "$UP" streams_died)"

# a client that goes away mid-stream is counted as a cancelled stream, at once
before=$(kv_stat "$UP" streams_cancelled)
curl -sN --max-time 0.4 "$U/v1/chat/completions" -H 'x-kvup-events: 100' -H 'x-kvup-delay-ms: 50' \
	-d '{"stream":true}' >/dev/null 2>&1
sleep 0.1
kv_eq "streams_cancelled +1" $((before + 1)) "$(kv_stat "$UP" streams_cancelled)"

# hang: no answer; closing counts as requests_cancelled
kv_eq "hang: no answer" 000 "$(KV_CURL_MAX=0.5 kv_curl "$R" "$U/v1/chat/completions" -H 'x-kvup-hang: 1' -d '{}')"
sleep 0.1
kv_eq "requests_cancelled after a hang" 1 "$(kv_stat "$UP" requests_cancelled)"

# pipelined requests answered in order; Expect: 100-continue
if kv_raw "$UP" \
	'send:GET /v1/echo?n=1 HTTP/1.1\r\nHost: x\r\nx-kvup-delay-ms: 100\r\n\r\nGET /v1/echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\n' \
	'expect:2000:n=1.*n=2'; then kv_ok "pipelined answers in order"
else kv_fail "pipelined answers: $(cat "$KV_TMP/raw.err")"; fi
if kv_raw "$UP" 'send:POST /v1/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n' \
	'expect:1000:^HTTP/1.1 100 Continue\r\n\r\n$' 'send:abc' 'expect:1000:"body":"abc"'
then kv_ok "100-continue"; else kv_fail "100-continue: $(cat "$KV_TMP/raw.err")"; fi

kv_eq "open_connections back to 0" 0 "$(curl -s "$U/kvup/stats" | sed -n 's/.*"open_connections":\([0-9]*\).*/\1/p' | awk '{print $1-1}')"
kv_done
