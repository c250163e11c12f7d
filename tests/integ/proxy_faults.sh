#!/bin/sh
# proxy_faults.sh: upstream failures and shutdown. A refused upstream is retried once on another
# instance; one that dies before its first byte too, and only once; none working -> 503; an
# upstream 5xx is relayed, not retried; death mid-stream -> a final `data: {"error":...}` event and
# kvgate keeps serving; a hanging upstream -> 504 after upstream_first_byte_timeout_ms; /health
# turns 503 when no upstream is healthy; SIGTERM lets in-flight streams finish, stops accepting,
# exits 0, and cuts streams at shutdown_timeout_ms.
. "$(dirname "$0")/lib.sh"

[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"
kv_start_kvup UP1 up1
kv_start_kvup UP2 up2
kv_start_kvup UP3 up3
kv_port DEAD1
kv_port DEAD2
R=$KV_TMP/r
FAST='"upstream_connect_timeout_ms": 500, "upstream_first_byte_timeout_ms": 800, "upstream_read_timeout_ms": 600,'

# ---- gate A: one dead port and one live kvup ----
kv_port PA
kv_conf "$KV_TMP/a.conf" "" "$PA" "$DEAD1 $UP1" "$FAST"
kv_start_kvgate "$KV_TMP/a.conf" "$PA"
GATE_A=$KVGATE_PID
A=http://127.0.0.1:$PA
codes=""
i=0
while [ $i -lt 6 ]; do codes="$codes$(kv_curl "$R" "$A/v1/chat/completions" -d '{"model":"m"}') "; i=$((i + 1)); done
kv_eq "dead + live: every request answered (refused -> retried on the other)" "200 200 200 200 200 200 " "$codes"
kv_eq "  by the live one" up1 "$(kv_header "$R.h" x-kvup-name)"
s0=$(kv_stat "$UP1" streams_completed)
kv_curl "$R" -N "$A/v1/chat/completions" -d '{"model":"m","stream":true}' >/dev/null
kv_curl "$R" -N "$A/v1/chat/completions" -d '{"model":"m","stream":true}' >/dev/null
kv_eq "dead + live: streams retried too" $((s0 + 2)) "$(kv_stat "$UP1" streams_completed)"

# death mid-stream: the client's stream ends with an error event; kvgate goes on
kv_curl "$R" -N "$A/v1/chat/completions" -H 'x-kvup-die-after: 3' -H 'x-kvup-events: 10' \
	-d '{"model":"m","stream":true}' >/dev/null
kv_eq "upstream dies mid-stream: events before the death relayed" "tok0 tok1 " "$(kv_sse "$R" s.content)"
kv_eq "  then a final error event, no [DONE]" "true|false|string" \
	"$(kv_sse "$R" '[s.error_last, s.done, s.error && typeof s.error.message].join("|")')"
kv_match "  the error event is OpenAI-shaped" '"type":"[a-z_]+"' "$(kv_sse "$R" 'JSON.stringify(s.error)')"
kv_eq "  and the stream does not end as a cut transfer" "" "$(grep -o 'transfer closed[^)]*' "$R.err")"
kv_eq "kvgate serves the next request" 200 "$(kv_curl "$R" "$A/v1/chat/completions" -d '{"model":"m"}')"
kv_curl "$R" -N "$A/v1/chat/completions" -d '{"model":"m","stream":true}' >/dev/null
kv_eq "  and the next stream" true "$(kv_sse "$R" s.done)"

# an engine that goes silent mid-stream (1.5 s between events; upstream_read_timeout_ms 600): the
# stream ends with an error event at the read timeout (it waited forever, holding the user's slot)
t0=$(kv_now)
kv_curl "$R" -N "$A/v1/chat/completions" -H 'x-kvup-events: 3' -H 'x-kvup-delay-ms: 1500' \
	-d '{"model":"m","stream":true}' >/dev/null
dt=$(($(kv_now) - t0))
kv_eq "silent engine mid-stream: an error event, no [DONE]" "true|false" "$(kv_sse "$R" '[s.error_last, s.done].join("|")')"
kv_match "  says why" 'timed out reading from the engine' "$(kv_sse "$R" 'JSON.stringify(s.error)')"
kv_le "  at the read timeout, not at the stream's end (ms)" "$dt" 2500

# hanging upstream: 504 after upstream_first_byte_timeout_ms (800), the upstream connection closed
c0=$(kv_stat "$UP1" requests_cancelled)
t0=$(kv_now)
code=$(kv_curl "$R" "$A/v1/chat/completions" -H 'x-kvup-hang: 1' -d '{"model":"m"}')
dt=$(($(kv_now) - t0))
kv_eq "hanging upstream -> 504" 504 "$code"
kv_err "504" "$R"
kv_ge "  not before the first-byte timeout (ms)" "$dt" 700
kv_le "  soon after it (ms)" "$dt" 2500
sleep 0.2
kv_eq "  the hanging upstream connection is closed" $((c0 + 1)) "$(kv_stat "$UP1" requests_cancelled)"
code=$(kv_curl "$R" -N "$A/v1/chat/completions" -H 'x-kvup-hang: 1' -d '{"model":"m","stream":true}')
kv_eq "hanging upstream, stream request -> 504" 504 "$code"

# an upstream error status is the upstream's answer: relayed, not retried
r0=$(kv_stat "$UP1" requests)
kv_eq "upstream 500 relayed" 500 "$(kv_curl "$R" "$A/v1/chat/completions" -H 'x-kvup-status: 500' -d '{}')"
kv_eq "  with its body" kvup_forced "$(kv_json "$R" j.error.code)"
kv_eq "  not retried" $((r0 + 1)) "$(kv_stat "$UP1" requests)"

# ---- gate B: three kvups that all close before answering: tried twice (once + one retry), 503 ----
kv_port PB
kv_conf "$KV_TMP/b.conf" "" "$PB" "$UP1 $UP2 $UP3" "$FAST"
kv_start_kvgate "$KV_TMP/b.conf" "$PB"
B=http://127.0.0.1:$PB
r0=$(kv_stat_sum requests "$UP1" "$UP2" "$UP3")
kv_eq "every upstream dies before a byte -> 503" 503 "$(kv_curl "$R" "$B/v1/chat/completions" -H 'x-kvup-die-after: 0' -d '{}')"
kv_err "503" "$R"
kv_eq "  after exactly two attempts (one retry)" $((r0 + 2)) "$(kv_stat_sum requests "$UP1" "$UP2" "$UP3")"
kv_eq "gate B serves afterwards" 200 "$(kv_curl "$R" "$B/v1/models")"
# the same on pooled connections (warm them first): the fresh-connection retry of a reused one
# counts too, so two engines' worth at most (it was three: a prompt that kills engines took two)
for i in 1 2 3 4 5 6; do kv_curl "$R" "$B/v1/chat/completions" -d '{}' >/dev/null; done
r0=$(kv_stat_sum requests "$UP1" "$UP2" "$UP3")
kv_eq "on pooled connections -> 503" 503 "$(kv_curl "$R" "$B/v1/chat/completions" -H 'x-kvup-die-after: 0' -d '{}')"
kv_eq "  delivered twice at most" $((r0 + 2)) "$(kv_stat_sum requests "$UP1" "$UP2" "$UP3")"

# ---- gate C: only dead upstreams ----
kv_port PC
kv_conf "$KV_TMP/c.conf" "" "$PC" "$DEAD1 $DEAD2" "$FAST"
kv_start_kvgate "$KV_TMP/c.conf" "$PC"
G=http://127.0.0.1:$PC
kv_eq "no upstream works -> 503" 503 "$(kv_curl "$R" "$G/v1/chat/completions" -d '{"model":"m"}')"
kv_err "503 no upstream" "$R"
kv_eq "  stream request too" 503 "$(kv_curl "$R" "$G/v1/chat/completions" -d '{"model":"m","stream":true}')"
health503() { [ "$(kv_curl "$R" "$G/health")" = 503 ]; }
if kv_wait_for "/health 503" 6000 health503; then kv_ok "/health is 503 when no upstream is healthy"
else kv_fail "/health with only dead upstreams: expected 503, got $(kv_curl "$R" "$G/health") $(head -c 300 "$R")"; fi
kv_eq "  and says which" "false false" "$(kv_json "$R" 'j.upstreams.map(u => u.healthy).join(" ")')"
kill -0 "$KVGATE_PID" 2>/dev/null || kv_fail "kvgate C died"

# ---- gate E: an upstream whose connect() hangs -> 504 after upstream_connect_timeout_ms (400) ----
kv_port HOLE
kv_bg blackhole "$KVUP" --port "$HOLE" --blackhole
kv_wait_port "$HOLE" "$KV_BG_PID"
kv_port PE
kv_conf "$KV_TMP/e.conf" "" "$PE" "$HOLE" '"upstream_connect_timeout_ms": 400, "upstream_first_byte_timeout_ms": 5000,'
kv_start_kvgate "$KV_TMP/e.conf" "$PE"
t0=$(kv_now)
code=$(kv_curl "$R" "http://127.0.0.1:$PE/v1/chat/completions" -d '{"model":"m"}')
dt=$(($(kv_now) - t0))
kv_eq "upstream connect hangs -> 504" 504 "$code"
kv_err "504 connect timeout" "$R"
kv_ge "  not before the connect timeout (ms)" "$dt" 350
kv_le "  within two connect timeouts and some (ms)" "$dt" 2500
# gate F: the hanging one and a live one: answered by the live one
kv_port PF
kv_conf "$KV_TMP/f.conf" "" "$PF" "$HOLE $UP3" '"upstream_connect_timeout_ms": 400,'
kv_start_kvgate "$KV_TMP/f.conf" "$PF"
codes=""
for i in 1 2 3 4; do codes="$codes$(KV_CURL_MAX=3 kv_curl "$R" "http://127.0.0.1:$PF/v1/models") "; done
kv_eq "hanging connect + live upstream: all answered" "200 200 200 200 " "$codes"

# ---- SIGTERM on gate A: the in-flight stream finishes, no new connections, exit 0 ----
kv_bg stream1 curl -sN --max-time 10 "$A/v1/chat/completions" -H 'x-kvup-events: 6' -H 'x-kvup-delay-ms: 150' \
	-d '{"model":"m","stream":true}'
SPID=$KV_BG_PID
sleep 0.3
t0=$(kv_now)
kill -TERM "$GATE_A"
sleep 0.2
kv_eq "after SIGTERM: a new connection is not served" 000 "$(KV_CURL_MAX=2 kv_curl "$R" "$A/v1/models")"
gone() { ! kill -0 "$1" 2>/dev/null; }
kv_wait_for "stream client done" 5000 gone "$SPID"
kv_eq "after SIGTERM: the in-flight stream finished whole" "tok0 tok1 tok2 tok3 tok4 tok5 |true" \
	"$(kv_sse "$KV_TMP/stream1.log" '[s.content, s.done].join("|")')"
if kv_wait_for "kvgate A exits" 5000 gone "$GATE_A"; then
	wait "$GATE_A"
	kv_eq "after SIGTERM: kvgate exits 0" 0 $?
	kv_le "  once the stream is done (ms after SIGTERM)" $(($(kv_now) - t0)) 3000
else kv_fail "kvgate A still running 5 s after SIGTERM"; fi
kv_forget "$SPID"

# ---- SIGTERM with a stream longer than shutdown_timeout_ms (600): cut at the deadline ----
kv_port PD
kv_conf "$KV_TMP/d.conf" "" "$PD" "$UP2" '"shutdown_timeout_ms": 600,'
kv_start_kvgate "$KV_TMP/d.conf" "$PD"
GATE_D=$KVGATE_PID
c0=$(kv_stat "$UP2" streams_cancelled)
kv_bg stream2 curl -sN --max-time 10 "http://127.0.0.1:$PD/v1/chat/completions" -H 'x-kvup-events: 100' \
	-H 'x-kvup-delay-ms: 100' -d '{"model":"m","stream":true}'
SPID=$KV_BG_PID
sleep 0.3
t0=$(kv_now)
kill -TERM "$GATE_D"
if kv_wait_for "kvgate D exits" 4000 gone "$GATE_D"; then
	dt=$(($(kv_now) - t0))
	wait "$GATE_D"
	kv_eq "SIGTERM with a long stream: exit 0" 0 $?
	kv_ge "  not before shutdown_timeout_ms (ms)" "$dt" 500
	kv_le "  soon after it (ms)" "$dt" 2000
else kv_fail "kvgate D still running 4 s after SIGTERM (shutdown_timeout_ms 600)"; fi
kv_wait_for "stream client done" 2000 gone "$SPID" || kv_fail "the cut stream's client still waits"
kv_forget "$SPID"
sleep 0.2
kv_eq "  the cut stream's upstream connection is closed" $((c0 + 1)) "$(kv_stat "$UP2" streams_cancelled)"
kv_done
