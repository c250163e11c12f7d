#!/bin/sh
# proxy_http.sh: kvgate's HTTP side over the plain listener: configuration checks, routes, methods,
# errors, forwarding (what the upstream receives), keep-alive, chunked bodies, pipelining,
# Expect: 100-continue, x-request-id, the access log, /health, /metrics, upstream pooling.
. "$(dirname "$0")/lib.sh"

[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"
kv_start_kvup UP1 up1
kv_start_kvup UP2 up2
kv_port P
C=$KV_TMP/kvgate.conf
R=$KV_TMP/r
U=http://127.0.0.1:$P

# ---- configuration: --check, an unknown key, an out-of-range value ----
kv_conf "$C" "" "$P" "$UP1 $UP2" '"upstream_first_byte_timeout_ms": 5000,'
timeout 5 "$KVGATE" --check -c "$C" >"$KV_TMP/check.out" 2>&1
kv_eq "--check on a good configuration" 0 $?
kv_conf "$KV_TMP/bad1.conf" "" "$P" "$UP1" '"max_conections": 10,'
timeout 5 "$KVGATE" --check -c "$KV_TMP/bad1.conf" >"$KV_TMP/check.out" 2>&1
kv_eq "--check on an unknown key exits 1" 1 $?
timeout 5 "$KVGATE" -c "$KV_TMP/bad1.conf" >"$KV_TMP/check.out" 2>&1
rc=$?
kv_match "start with an unknown key: non-zero exit (not still running)" '^([1-9]|[1-9][0-9]|1[01][0-9]|12[0-35-9])$' "$rc"
kv_match "start with an unknown key: the message names it" 'max_conections' "$(cat "$KV_TMP/check.out")"
kv_conf "$KV_TMP/bad2.conf" "" "$P" "$UP1" '"max_header_bytes": -5,'
timeout 5 "$KVGATE" -c "$KV_TMP/bad2.conf" >"$KV_TMP/check.out" 2>&1
rc=$?
kv_match "start with an out-of-range value: non-zero exit" '^([1-9]|[1-9][0-9]|1[01][0-9]|12[0-35-9])$' "$rc"
kv_match "start with an out-of-range value: the message names the key" 'max_header_bytes' "$(cat "$KV_TMP/check.out")"
kv_listening "$P" && kv_fail "a kvgate with a bad configuration still listens on $P"

kv_start_kvgate "$C" "$P"

# ---- /v1/models: kvgate lists what the engines reported (their /v1/models, read by its checks) ----
kv_eq "GET /v1/models" 200 "$(kv_curl "$R" "$U/v1/models")"
kv_match "/v1/models lists the engines' model" '^up[12]$' "$(kv_json "$R" 'j.data[0].id')"
kv_eq "  with its max_model_len" 4096 "$(kv_json "$R" 'j.data[0].max_model_len')"
kv_eq "  object list" list "$(kv_json "$R" 'j.object')"
kv_eq "GET /v1/models/ID" 200 "$(kv_curl "$R" "$U/v1/models/$(kv_json "$R" 'j.data[0].id')")"
kv_eq "GET /v1/models/unknown -> 404" 404 "$(kv_curl "$R" "$U/v1/models/nope")"
kv_match "  model_not_found" '"code":"model_not_found"' "$(cat "$R")"

# ---- forwarded routes (the answer comes from a kvup: x-kvup-name passes through) ----
kv_eq "GET /v1/echo" 200 "$(kv_curl "$R" "$U/v1/echo")"
kv_match "upstream response headers pass through" '^up[12]$' "$(kv_header "$R.h" x-kvup-name)"
kv_eq "POST /v1/chat/completions" 200 "$(kv_curl "$R" "$U/v1/chat/completions" -H 'content-type: application/json' \
	-d '{"model":"m","messages":[{"role":"user","content":"hi"}]}')"
kv_eq "chat.completion relayed" "chat.completion|tok0 tok1 tok2 tok3 tok4 " \
	"$(kv_json "$R" 'j.object + "|" + j.choices[0].message.content')"
kv_eq "POST /v1/completions" "200 text_completion" \
	"$(kv_curl "$R" "$U/v1/completions" -d '{"prompt":"x"}') $(kv_json "$R" j.object)"
kv_eq "POST /v1/beta/completions" "200 text_completion" \
	"$(kv_curl "$R" "$U/v1/beta/completions" -d '{"prompt":"x","suffix":"y"}') $(kv_json "$R" j.object)"
kv_eq "POST /v1/responses" "200 response" \
	"$(kv_curl "$R" "$U/v1/responses" -d '{"model":"m","input":"hi"}') $(kv_json "$R" j.object)"
kv_eq "POST /v1/embeddings" "200 list" \
	"$(kv_curl "$R" "$U/v1/embeddings" -d '{"model":"m","input":"hi"}') $(kv_json "$R" j.object)"
kv_eq "an upstream 4xx is relayed as is" 429 "$(kv_curl "$R" "$U/v1/chat/completions" -H 'x-kvup-status: 429' -d '{}')"
kv_eq "  with the upstream's body" kvup_forced "$(kv_json "$R" j.error.code)"

# what the upstream receives: method, path and query, body, the client's headers, a request id
body='{"model":"m","messages":[{"role":"user","content":"caf\u00e9 \"q\""}],"x":[1,2,3]}'
kv_curl "$R" "$U/v1/echo?a=1&b=2" -H 'x-custom: v1' -H 'x-session-id: s-42' --data-binary "$body" >/dev/null
kv_eq "forwarded method, path, query" "POST /v1/echo?a=1&b=2" "$(kv_json "$R" 'j.method + " " + j.path')"
kv_eq "forwarded body byte for byte" "$body" "$(kv_json "$R" j.body)"
kv_eq "forwarded client headers" "v1|s-42" "$(kv_json "$R" 'j.headers["x-custom"] + "|" + j.headers["x-session-id"]')"
kv_match "the upstream sees an x-request-id" '^[A-Za-z0-9._-]{1,64}$' "$(kv_json "$R" 'j.headers["x-request-id"]')"
kv_eq "forwarded as HTTP/1.1" 1.1 "$(kv_json "$R" j.version)"

# ---- kvgate's own answers: 404, 405, 400 (never forwarded) ----
before=$(kv_stat_sum requests "$UP1" "$UP2")
kv_eq "unknown path -> 404" 404 "$(kv_curl "$R" "$U/nope")"
kv_err "404" "$R"
kv_eq "/v2/... -> 404" 404 "$(kv_curl "$R" "$U/v2/chat/completions" -d '{}')"
kv_eq "GET /v1/chat/completions -> 405" 405 "$(kv_curl "$R" "$U/v1/chat/completions")"
kv_err "405" "$R"
kv_eq "DELETE /v1/models -> 405" 405 "$(kv_curl "$R" -X DELETE "$U/v1/models")"
kv_eq "GET /v1/completions -> 405" 405 "$(kv_curl "$R" "$U/v1/completions")"
kv_eq "GET /v1/embeddings -> 405" 405 "$(kv_curl "$R" "$U/v1/embeddings")"
kv_eq "PUT /v1/responses -> 405" 405 "$(kv_curl "$R" -X PUT "$U/v1/responses" -d '{}')"
kv_eq "404/405 never reach an upstream" "$before" "$(kv_stat_sum requests "$UP1" "$UP2")"
# This kvgate neither counts tokens nor routes by model, so it does not read bodies: a malformed one
# goes to the engine, whose 400 is relayed (proxy_route.sh checks kvgate's own 400 when it reads).
kv_eq "malformed JSON to chat -> the engine's 400" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -d '{"model":"m",')"
kv_err "400 malformed JSON" "$R" invalid_request_error
kv_eq "malformed JSON to completions -> 400" 400 "$(kv_curl "$R" "$U/v1/completions" -d 'prompt=x')"
kv_eq "empty body to chat -> 400" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -X POST)"

# ---- /health, /metrics ----
kv_eq "GET /health" 200 "$(kv_curl "$R" "$U/health")"
kv_eq "/health body" "ok|2|true|default" "$(kv_json "$R" \
	'[j.status, j.upstreams.length, j.upstreams.every(u => u.healthy === true), j.upstreams[0].pool].join("|")')"
kv_eq "/health lists the upstream addresses" true "$(kv_json "$R" \
	"j.upstreams.map(u => u.address).sort().join() === ['127.0.0.1:$UP1', '127.0.0.1:$UP2'].sort().join()")"
kv_eq "GET /metrics" 200 "$(kv_curl "$R" "$U/metrics")"
kv_match "/metrics is Prometheus text" '^text/plain' "$(kv_header "$R.h" content-type)"
for m in kvgate_requests_total kvgate_requests_in_flight kvgate_upstream_ttfb_seconds_bucket \
	kvgate_upstream_ttfb_seconds_count kvgate_request_duration_seconds_bucket \
	kvgate_request_duration_seconds_sum kvgate_bytes_relayed_total kvgate_connections_open \
	kvgate_tls_handshakes_total kvgate_tls_handshake_failures_total; do
	kv_file_has "/metrics has $m" "^$m(\{| )" "$R"
done
kv_file_has "/metrics: requests by route and status" '^kvgate_requests_total\{(.*route="[^"]*chat[^"]*".*status="200"|.*status="200".*route="[^"]*chat[^"]*")' "$R"
n404=$(kv_metric 'kvgate_requests_total\{.*status="404"' "$R")
kv_ge "/metrics counts the 404s" "$n404" 2
kv_curl "$R" "$U/nope" >/dev/null
kv_curl "$R" "$U/metrics" >/dev/null
kv_eq "/metrics: one more 404 counted" $((n404 + 1)) "$(kv_metric 'kvgate_requests_total\{.*status="404"' "$R")"
kv_ge "/metrics: ttfb observations" "$(kv_metric 'kvgate_upstream_ttfb_seconds_count' "$R")" 5
kv_ge "/metrics: bytes relayed" "$(kv_metric 'kvgate_bytes_relayed_total' "$R")" 500
kv_ge "/metrics: a connection open (this one)" "$(kv_metric 'kvgate_connections_open' "$R")" 1

# ---- keep-alive: two requests, one connection ----
n=$(curl -sS --max-time 10 -o /dev/null -o /dev/null -w '%{num_connects} ' "$U/v1/models" "$U/health")
kv_eq "keep-alive: the second request reuses the connection" "1 0 " "$n"

# ---- chunked request bodies ----
printf '{"model":"m","messages":[],"pad":"%0500d"}' 0 >"$KV_TMP/chunked.json"
kv_curl "$R" "$U/v1/echo" -H 'Transfer-Encoding: chunked' --data-binary @"$KV_TMP/chunked.json" >/dev/null
kv_eq "chunked body forwarded whole" "$(cat "$KV_TMP/chunked.json")" "$(kv_json "$R" j.body)"
kv_eq "chunked body to chat (parsed by kvgate)" 200 "$(kv_curl "$R" "$U/v1/chat/completions" \
	-H 'Transfer-Encoding: chunked' --data-binary @"$KV_TMP/chunked.json")"
if kv_raw "$P" 'send:POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"mod\r\n' \
	'sleep:100' 'send:7\r\nel":"m"\r\n1\r\n}\r\n0\r\n\r\n' 'expect:3000:HTTP/1.1 200.*tok4'; then
	kv_ok "chunked body in pieces"
else kv_fail "chunked body in pieces: $(cat "$KV_TMP/raw.err")"; fi

# ---- pipelining: three requests in one write, the first slow upstream; answers in order ----
if kv_raw "$P" "send:GET /v1/echo?n=1 HTTP/1.1\r\nHost: x\r\nx-kvup-delay-ms: 300\r\n\r\nPOST /v1/echo?n=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /health HTTP/1.1\r\nHost: x\r\n\r\n" \
	'expect:5000:n=1.*n=2.*"status":"ok"' 'count:3:HTTP/1.1 200'; then kv_ok "pipelined requests answered in order"
else kv_fail "pipelined requests: $(cat "$KV_TMP/raw.err")"; head -c 1500 "$KV_TMP/raw.out"; echo; fi

# ---- Expect: 100-continue, answered by kvgate before the body is sent ----
if kv_raw "$P" 'send:POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 13\r\n\r\n' \
	'expect:1000:^HTTP/1.1 100 Continue\r\n\r\n$' 'send:{"model":"m"}' 'expect:3000:HTTP/1.1 200.*tok4' \
	'count:1:100 Continue'; then kv_ok "Expect: 100-continue"
else kv_fail "Expect: 100-continue: $(cat "$KV_TMP/raw.err")"; head -c 800 "$KV_TMP/raw.out"; echo; fi

# no 100 Continue where there is no route (the body would only be refused)
if kv_raw "$P" 'send:POST /nope HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n' \
	'sleep:300' 'count:0:100 Continue'; then kv_ok "no 100 Continue for an unknown route"
else kv_fail "100 Continue on an unknown route: $(cat "$KV_TMP/raw.err")"; fi
# a Transfer-Encoding coding other than chunked: 501, not the gzip bytes sent on as plain
if kv_raw "$P" 'send:POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n' \
	'expect:3000:^HTTP/1.1 501 .*"message":"a Transfer-Encoding other than chunked'; then kv_ok "Transfer-Encoding gzip, chunked -> 501"
else kv_fail "Transfer-Encoding gzip: $(cat "$KV_TMP/raw.err") $(head -c 300 "$KV_TMP/raw.out")"; fi
# absolute-form request targets (RFC 9112: a server accepts them), and an id on parse errors
if kv_raw "$P" 'send:GET http://127.0.0.1/v1/echo?a=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' \
	'expect:3000:^HTTP/1.1 200 .*"path":"/v1/echo\?a=1"'; then kv_ok "absolute-form target -> its path"
else kv_fail "absolute-form: $(cat "$KV_TMP/raw.err") $(head -c 300 "$KV_TMP/raw.out")"; fi
if kv_raw "$P" 'send:GET /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n' \
	'expect:3000:^HTTP/1.1 400 .*x-request-id: [0-9a-f]{16}\r\n'; then kv_ok "a parse error carries a request id"
else kv_fail "parse error id: $(cat "$KV_TMP/raw.err") $(head -c 300 "$KV_TMP/raw.out")"; fi

# ---- x-request-id: passed through when sane, else replaced; generated; returned ----
kv_curl "$R" "$U/v1/echo" -H 'x-request-id: Abc-1.2_3' -d 'x' >/dev/null
kv_eq "x-request-id passed to the upstream" Abc-1.2_3 "$(kv_json "$R" 'j.headers["x-request-id"]')"
kv_eq "x-request-id returned" Abc-1.2_3 "$(kv_header "$R.h" x-request-id)"
kv_curl "$R" "$U/v1/echo" -H 'x-request-id: bad id;<script>' -d 'x' >/dev/null
rid=$(kv_header "$R.h" x-request-id)
kv_match "an unsafe x-request-id is replaced" '^[A-Za-z0-9._-]{1,64}$' "$rid"
kv_eq "  by the same id upstream" "$rid" "$(kv_json "$R" 'j.headers["x-request-id"]')"
long=$(printf '%065d' 7)
kv_curl "$R" "$U/v1/echo" -H "x-request-id: $long" -d 'x' >/dev/null
rid=$(kv_header "$R.h" x-request-id)
kv_match "a 65-char x-request-id is replaced" '^[A-Za-z0-9._-]{1,64}$' "$rid"
kv_ne "  (not passed as is)" "$long" "$rid"
kv_curl "$R" "$U/v1/models" >/dev/null
r1=$(kv_header "$R.h" x-request-id)
kv_curl "$R" "$U/v1/models" >/dev/null
r2=$(kv_header "$R.h" x-request-id)
kv_match "an id is generated" '^[A-Za-z0-9._-]{1,64}$' "$r1"
kv_ne "  a new one per request" "$r1" "$r2"
kv_match "errors carry an id too" '^[A-Za-z0-9._-]{1,64}$' "$(kv_curl "$R" "$U/nope" >/dev/null; kv_header "$R.h" x-request-id)"

# ---- access log: one line per request with rid, status, route, upstream ----
kv_curl "$R" "$U/v1/chat/completions" -H 'x-request-id: acc-log-1' -d '{"model":"m"}' >/dev/null
kv_curl "$R" "$U/nope" -H 'x-request-id: acc-log-2' >/dev/null
sleep 0.2
L=$KV_TMP/access.log
kv_eq "access log: one line for the request" 1 "$(grep -c 'rid=acc-log-1\b' "$L" 2>/dev/null)"
line=$(grep 'rid=acc-log-1\b' "$L" 2>/dev/null)
kv_match "access log: status" 'status=200\b' "$line"
kv_match "access log: route" '/v1/chat/completions' "$line"
kv_match "access log: upstream" "127\.0\.0\.1:($UP1|$UP2)" "$line"
kv_match "access log: a 404 is logged with its status" 'status=404\b' "$(grep 'rid=acc-log-2\b' "$L" 2>/dev/null)"

# ---- load spreading and pooled upstream connections ----
s1=$(kv_stat "$UP1" requests)
s2=$(kv_stat "$UP2" requests)
pids=""
for i in 1 2 3 4; do
	curl -s --max-time 10 "$U/v1/chat/completions" -H 'x-kvup-delay-ms: 300' -d '{}' -o /dev/null &
	pids="$pids $!"
done
for p in $pids; do wait "$p"; done
kv_ge "4 concurrent requests: some on up1" $(($(kv_stat "$UP1" requests) - s1)) 1
kv_ge "4 concurrent requests: some on up2" $(($(kv_stat "$UP2" requests) - s2)) 1
c0=$(kv_stat_sum connections_total "$UP1" "$UP2")
i=0
while [ $i -lt 30 ]; do curl -s --max-time 10 "$U/v1/models" -o /dev/null; i=$((i + 1)); done
c1=$(kv_stat_sum connections_total "$UP1" "$UP2")
kv_le "30 requests on 30 client connections reuse pooled upstream connections (new upstream connections)" $((c1 - c0)) 8
kill -0 "$KVGATE_PID" 2>/dev/null || kv_fail "kvgate died"
kv_done
