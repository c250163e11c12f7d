#!/bin/sh
# security_limits.sh (issue 9 item 5): limits that cannot be bypassed, nothing reflected can split a
# response header or an access-log line, and API keys never reach a log on any error path.
#   - a user with max_concurrent 1 never has more than one stream at the engine, whether it
#     pipelines 5 requests on one connection, opens 5 connections at once (with and without a wait
#     queue) or sends chunked bodies (kvup's stream counters are sampled every 5 ms); a requests-per-
#     minute budget holds against pipelining too.
#   - chunk extensions and trailers do not carry a body past max_body_bytes / max_header_bytes.
#   - header injection: request ids with quotes, spaces, bare CR or LF, obs-fold, over 64 bytes; a
#     path and a model name with quotes and CR/LF; a forged X-Forwarded-For: the response keeps its
#     own header lines, the access log one line per request, the engine sees kvgate's values.
#   - the API key in every failing request (401 near-miss, 400, 404, 405, 413, 431, 408, 429, 500,
#     504, 503, engine death mid-stream, malformed Authorization): not in the access log, kvgate's
#     log or /metrics.
. "$(dirname "$0")/lib.sh"

[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"
kv_start_kvup UP up1
kv_port DEAD
kv_port P
C=$KV_TMP/kvgate.conf
R=$KV_TMP/r
U=http://127.0.0.1:$P
h() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
KA=sk-SeCrEt-alice-7f3a9
KD=sk-SeCrEt-dave-42b1c
KC=sk-SeCrEt-carol-9e0d
kv_conf "$C" "" "$P" "$UP" "\"max_body_bytes\": 4096, \"max_header_bytes\": 2048, \"header_timeout_ms\": 700,
  \"upstream_first_byte_timeout_ms\": 400,
  \"pools\": [{\"name\": \"default\", \"model\": \"m\", \"upstreams\": [\"127.0.0.1:$UP\"]},
            {\"name\": \"deadpool\", \"model\": \"dead\", \"upstreams\": [\"127.0.0.1:$DEAD\"]}],
  \"users\": [{\"name\": \"alice\", \"key_sha256\": \"$(h $KA)\", \"max_concurrent\": 1},
              {\"name\": \"dave\", \"key_sha256\": \"$(h $KD)\", \"max_concurrent\": 1, \"queue\": 8, \"queue_timeout_ms\": 10000},
              {\"name\": \"carol\", \"key_sha256\": \"$(h $KC)\", \"max_concurrent\": 0, \"requests_per_minute\": 3}],"
# kv_conf wrote its own "pools" line first; the later key would be a duplicate: drop lib.sh's
grep -v '"pools": \[{"name": "default", "upstreams"' "$C" >"$C.2" && mv "$C.2" "$C"
kv_start_kvgate "$C" "$P"

# ---- limits vs pipelining, many connections, chunked bodies ----
BODY='{"model":"m","stream":true}'     # 27 bytes
req() {  # req KEY [chunked]: one raw stream request (4 events, 60 ms apart: ~250 ms at the engine)
	if [ "${2:-}" = chunked ]; then
		printf 'POST /v1/chat/completions HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer %s\\r\\nx-kvup-events: 4\\r\\nx-kvup-delay-ms: 60\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n1b\\r\\n%s\\r\\n0\\r\\n\\r\\n' "$1" "$BODY"
	else
		printf 'POST /v1/chat/completions HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer %s\\r\\nx-kvup-events: 4\\r\\nx-kvup-delay-ms: 60\\r\\nContent-Length: 27\\r\\n\\r\\n%s' "$1" "$BODY"
	fi
}
mon_start() {
	rm -f "$KV_TMP/mon.stop"
	kv_bg mon node "$KV_JS/inflight.mjs" "$UP" "$KV_TMP/mon.stop"
	MON=$KV_BG_PID
	sleep 0.2
}
mon_max() {
	touch "$KV_TMP/mon.stop"
	wait "$MON"
	kv_forget "$MON"
	kv_json "$KV_TMP/mon.log" j.max
}

# 1. dave (queue 8) pipelines 5 streams on one connection: all answered in order, one at a time
mon_start
five=$(req "$KD")$(req "$KD")$(req "$KD")$(req "$KD")$(req "$KD")
if kv_raw "$P" "send:$five" 'expect:8000:(data: \[DONE\].*){5}'; then kv_ok "dave pipelines 5 streams: all 5 complete"
else kv_fail "dave pipelining: $(cat "$KV_TMP/raw.err")"; fi
kv_eq "  5 responses 200" 5 "$(grep -o 'HTTP/1.1 200' "$KV_TMP/raw.out" | wc -l | tr -d ' ')"
kv_eq "  never more than 1 in flight at the engine" 1 "$(mon_max)"

# 2. dave opens 5 connections at once: the queue serves them one after the other
mon_start
t0=$(kv_now)
pids=""
for i in 1 2 3 4 5; do
	curl -sN --max-time 15 -o "$KV_TMP/d$i" -w '%{http_code}' "$U/v1/chat/completions" -H "Authorization: Bearer $KD" \
		-H 'x-kvup-events: 4' -H 'x-kvup-delay-ms: 60' -d "$BODY" >"$KV_TMP/d$i.code" 2>/dev/null &
	pids="$pids $!"
done
for p in $pids; do wait "$p"; done
dt=$(($(kv_now) - t0))
kv_eq "dave, 5 connections at once: all 200 (queued)" "200 200 200 200 200" "$(cat "$KV_TMP"/d[1-5].code | tr '\n' ' ' | sed 's/ $//' | sed 's/\([0-9]\{3\}\)/\1 /g; s/ *$//; s/  */ /g')"
kv_eq "  never more than 1 in flight at the engine" 1 "$(mon_max)"
kv_ge "  so they took 5 x ~250 ms (ms)" "$dt" 1150

# 3. alice (no queue) opens 5 connections at once: 1 served, 4 refused with 429
mon_start
pids=""
for i in 1 2 3 4 5; do
	curl -sN --max-time 15 -o "$KV_TMP/a$i" -w '%{http_code}\n' "$U/v1/chat/completions" -H "Authorization: Bearer $KA" \
		-H 'x-kvup-events: 4' -H 'x-kvup-delay-ms: 60' -d "$BODY" >"$KV_TMP/a$i.code" 2>/dev/null &
	pids="$pids $!"
done
for p in $pids; do wait "$p"; done
kv_eq "alice, 5 connections at once: one 200, four 429" "1 4" \
	"$(cat "$KV_TMP"/a[1-5].code | grep -c 200) $(cat "$KV_TMP"/a[1-5].code | grep -c 429)"
kv_eq "  never more than 1 in flight at the engine" 1 "$(mon_max)"

# 4. alice, 5 connections with chunked bodies, plus 5 pipelined on a sixth connection
mon_start
pids=""
for i in 1 2 3 4 5; do
	node "$KV_JS/raw.mjs" "$P" "send:$(req "$KA" chunked)" 'expect:5000:(\[DONE\]|"code":"[a-z_]+"\}\})' >"$KV_TMP/c$i" 2>&1 &
	pids="$pids $!"
done
node "$KV_JS/raw.mjs" "$P" "send:$(req "$KA" chunked)$(req "$KA" chunked)$(req "$KA" chunked)$(req "$KA" chunked)$(req "$KA" chunked)" \
	'expect:8000:(HTTP/1.1 .*){5}(\[DONE\]|\}\})' >"$KV_TMP/c6" 2>&1 &
pids="$pids $!"
for p in $pids; do wait "$p"; done
n200=$(cat "$KV_TMP"/c[1-6] | grep -o 'HTTP/1.1 200' | wc -l | tr -d ' ')
n429=$(cat "$KV_TMP"/c[1-6] | grep -o 'HTTP/1.1 429' | wc -l | tr -d ' ')
kv_eq "alice, chunked bodies on 6 connections (10 requests): each answered 200 or 429" 10 $((n200 + n429))
kv_ge "  some refused" "$n429" 4
kv_eq "  never more than 1 in flight at the engine" 1 "$(mon_max)"

# 5. carol (3 requests a minute) pipelines 6
six=""
for i in 1 2 3 4 5 6; do six="$six"'GET /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer '"$KC"'\r\n\r\n'; done
kv_raw "$P" "send:$six" 'expect:5000:(HTTP/1.1 .*){6}\}'
kv_eq "carol (3 rpm) pipelines 6: 3 served, 3 refused" "3 3" \
	"$(grep -o 'HTTP/1.1 200' "$KV_TMP/raw.out" | wc -l | tr -d ' ') $(grep -o 'HTTP/1.1 429' "$KV_TMP/raw.out" | wc -l | tr -d ' ')"

# ---- chunk extensions and trailers past the caps ----
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$KVGATE_PID/status"; }
r0=$(rss_kb)
node "$KV_JS/conns.mjs" chunkext "$P" 500 "$KA" >"$KV_TMP/ext.out"
r1=$(rss_kb)
# Under ASan, freed memory waits in a quarantine of up to 8 MB (lib.sh sets quarantine_size_mb=8)
# before it is reused, so RSS grows by up to that much for any churn: allowed on top.
ext_cap=2048
case $BUILD in *asan*) ext_cap=$((2048 + 8192)) ;; esac
kv_le "30 MB of chunk extensions around a 500-byte body: not buffered (kvgate RSS growth, KB)" $((r1 - r0)) $ext_cap
sed -n '/^\r\{0,1\}$/,$p' "$KV_TMP/ext.out" | tail -n +2 >"$R"
kv_eq "  nor relayed: the engine gets the 500 data bytes with a Content-Length" "500 500" \
	"$(kv_json "$R" '[j.body.length, j.headers["content-length"]].join(" ")')"
tr=""
for i in 1 2 3 4 5 6 7 8 9 10; do tr="${tr}x-t$i: $(printf '%0500d' 0)\\r\\n"; done
kv_raw "$P" "send:POST /v1/echo HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer $KA\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n1\\r\\nx\\r\\n0\\r\\n${tr}\\r\\n" \
	'expect:3000:^HTTP/1.1 [0-9]+|closed:3000'
st=$(head -n 1 "$KV_TMP/raw.out" | cut -d' ' -f2)
kv_match "5 KB of trailers (header cap 2048): refused, not relayed" '^(400|413|431|)$' "$st"

# ---- header injection ----
# kvgate's own responses and relayed ones: the header block of the response in raw.out
hdrs() { sed -n '1,/^\r\{0,1\}$/p' "$KV_TMP/raw.out"; }
inject() {  # inject WHAT RID-HEADER-BYTES: GET /v1/models with that x-request-id line
	kv_raw "$P" "send:GET /v1/models HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer $KA\\r\\n$2\\r\\n\\r\\n" \
		'expect:3000:^HTTP/1.1 [0-9]+ .*\r\n\r\n|closed:3000'
	kv_nomatch "$1: no injected response header" '(^|[\r\n])(X-Evil|Set-Cookie)' "$(hdrs)"
	rid=$(hdrs | grep -i '^x-request-id:' | sed 's/^[^:]*: *//' | tr -d '\r')
	kv_match "  the response's x-request-id is a clean token or absent" '^[A-Za-z0-9._-]{0,64}$' "$rid"
}
inject 'request id with a quote and a space' 'x-request-id: a" status=999 x="'
inject 'request id with a bare LF' 'x-request-id: a\nX-Evil: 1'
inject 'request id with a bare CR' 'x-request-id: a\rX-Evil: 1'
inject 'request id with obs-fold' 'x-request-id: abc\r\n X-Evil: 1'
inject 'request id with an encoded CRLF' 'x-request-id: a%0d%0aX-Evil:%201'
inject 'request id of 65 bytes' "x-request-id: $(printf '%065d' 0)"
inject 'request id with Set-Cookie after a NUL' 'x-request-id: a\x00Set-Cookie: s=1'
kv_eq "a clean request id is kept" "my-id_1.2" "$(kv_curl "$R" "$U/v1/models" -H "Authorization: Bearer $KA" -H 'x-request-id: my-id_1.2' >/dev/null; kv_header "$R.h" x-request-id)"
kv_eq "  and passed to the engine" "my-id_1.2" "$(kv_curl "$R" "$U/v1/echo" -H "Authorization: Bearer $KA" -H 'x-request-id: my-id_1.2' -d x >/dev/null; kv_json "$R" 'j.headers["x-request-id"]')"
kv_curl "$R" "$U/v1/echo" -H "Authorization: Bearer $KA" -H 'x-request-id: a"b' -H 'X-Forwarded-For: 6.6.6.6' -d x >/dev/null
kv_eq "a refused request id is replaced before the engine" "true" "$(kv_json "$R" '/^[0-9a-f]{16}$/.test(j.headers["x-request-id"])')"
kv_eq "a forged X-Forwarded-For is replaced by the peer" "127.0.0.1" "$(kv_json "$R" 'j.headers["x-forwarded-for"]')"
# a path with a quote and encoded CR/LF, and a model name with CR/LF and a quote (404 model_not_found)
kv_raw "$P" 'send:GET /v1/no"pe%0d%0aX-Evil:%201?a="b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer '"$KA"'\r\n\r\n' 'expect:3000:\r\n\r\n'
kv_nomatch "path with a quote and %0d%0a: no injected response header" '(^|[\r\n])X-Evil' "$(hdrs)"
kv_curl "$R" "$U/v1/chat/completions" -H "Authorization: Bearer $KA" \
	-d '{"model":"x\r\nX-Evil: 1\"\u0000<","messages":[{"role":"user","content":"hi"}]}' >"$KV_TMP/code"
kv_eq "model name with CR/LF/quote/NUL -> 404" 404 "$(cat "$KV_TMP/code")"
kv_err "  an OpenAI-shaped (valid JSON) body" "$R"
kv_nomatch "  no injected response header" '(^|[\r\n])X-Evil' "$(cat "$R.h")"
sleep 0.1
# the access log: every line a whole logfmt record (one per request, nothing split)
kv_eq "access log: every line starts a record (ts=...)" 0 "$(grep -cv '^ts=[0-9T:.Z-]* rid=' "$KV_TMP/access.log")"
kv_eq "access log: every line ends with its fields (no line cut by an injected newline)" 0 \
	"$(grep -cv 'status=[0-9]* bytes=[0-9]* ttfb_ms=' "$KV_TMP/access.log")"
kv_eq "access log: no unescaped quote inside path=\"...\"" 0 \
	"$(grep -o 'path="\([^"\\]\|\\.\)*"[^ ]' "$KV_TMP/access.log" | grep -vc '^path="[^"]*" $' | sed 's/^0$/0/')"
kv_eq "access log: no raw X-Evil field" 0 "$(grep -c '^X-Evil\| X-Evil=' "$KV_TMP/access.log")"

# auth comes before the body is read: no key and a broken body is a 401, not a 400
kv_eq "no key, broken JSON -> 401" 401 "$(kv_curl "$R" "$U/v1/chat/completions" -d '{"model":')"

# ---- the key on every error path, then: not in any log ----
K="Authorization: Bearer $KA"
kv_curl "$R" "$U/v1/models" -H "Authorization: Bearer ${KA}0" >/dev/null     # 401 (the key + 1 char)
kv_curl "$R" "$U/v1/models" -H "Authorization: Bearer $(printf '%s' "$KA" | cut -c 1-15)" >/dev/null  # 401 (prefix)
kv_curl "$R" "$U/v1/models" -H "Authorization: Basic $(printf 'u:%s' "$KA" | base64)" >/dev/null  # 401 scheme
kv_curl "$R" "$U/v1/models" -H "Authorization: $KA" >/dev/null               # 401 no scheme
kv_curl "$R" "$U/v1/models" -H "x-api-key: $KA" >/dev/null                   # 401 other header
kv_curl "$R" "$U/v1/chat/completions" -H "$K" -d '{' >/dev/null               # 400
kv_curl "$R" "$U/v1/nope" -H "$K" >/dev/null                                   # 404
kv_curl "$R" "$U/v1/chat/completions" -H "$K" -X PUT -d '{}' >/dev/null        # 405
printf '{"model":"m","pad":"%05000d"}' 0 >"$KV_TMP/big.json"
kv_curl "$R" "$U/v1/chat/completions" -H "$K" --data-binary @"$KV_TMP/big.json" >/dev/null   # 413
kv_curl "$R" "$U/v1/models" -H "$K" -H "x-big: $(printf '%03000d' 0)" >/dev/null             # 431
kv_curl "$R" "$U/v1/chat/completions" -H "$K" -H 'x-kvup-status: 500' -d '{"model":"m"}' >/dev/null   # 500
kv_curl "$R" "$U/v1/chat/completions" -H "$K" -H 'x-kvup-hang: 1' -d '{"model":"m"}' >/dev/null       # 504
kv_curl "$R" "$U/v1/chat/completions" -H "$K" -d '{"model":"dead"}' >/dev/null                        # 503
kv_curl "$R" "$U/v1/chat/completions" -H "$K" -H 'x-kvup-die-after: 2' -d '{"model":"m","stream":true}' >/dev/null
kv_raw "$P" "send:GET /v1/models HTTP/1.1\\r\\nAuthorization: Bearer $KA\\r\\nHo" 'closed:2500'   # 408
kv_raw "$P" "send:GET /v1/models HTTP/1.1\\r\\nAuthorization: Bearer $KA\\x01\\r\\n\\r\\n" 'closed:2500'  # bad byte
kv_raw "$P" "send:GET /v1/mo dels HTTP/1.1\\r\\nAuthorization: Bearer $KA\\r\\n\\r\\n" 'closed:2500'    # parse error
kv_curl "$R" "$U/metrics" >"$KV_TMP/code"
cp "$R" "$KV_TMP/metrics.txt"
sleep 0.2
hits=$(grep -l "SeCrEt" "$KV_TMP/access.log" "$KVGATE_LOG" "$KV_TMP/metrics.txt" 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ')
kv_eq "no API key (nor a prefix of one) in the access log, kvgate's log or /metrics after every error path" "" "$hits"
kv_ge "  (those error paths were logged)" "$(grep -c 'status=\(400\|401\|404\|405\|413\|431\|500\|503\|504\)' "$KV_TMP/access.log")" 12
kill -0 "$KVGATE_PID" 2>/dev/null || kv_fail "kvgate died"
kv_done
