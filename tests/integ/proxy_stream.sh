#!/bin/sh
# proxy_stream.sh: SSE through kvgate: the stream's shape survives (plain and TLS), streaming is
# decided by the body's "stream" and never by Accept, events are relayed one by one (not buffered),
# a long stream arrives whole, a client that goes away makes kvgate close the upstream connection at
# once (mid-stream and mid-request), and a slow reader holds the upstream back (backpressure).
. "$(dirname "$0")/lib.sh"

[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"
kv_start_kvup UP up1
kv_port P
kv_port T
C=$KV_TMP/kvgate.conf
R=$KV_TMP/r
U=http://127.0.0.1:$P
S=https://127.0.0.1:$T
kv_conf "$C" "$T" "$P" "$UP"
kv_start_kvgate "$C" "$P" "$T"
CHAT='{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}'
SHAPE='[s.role_first, s.content, s.finish.join(), s.usage && s.usage.completion_tokens, s.done, s.same_id,
	s.same_created, s.usage_null_before, s.bad.length, s.error].join("|")'

# ---- the shape, plain and TLS ----
for base in "$U" "$S"; do
	kv_eq "stream over $base" 200 "$(kv_curl "$R" -N "$base/v1/chat/completions" -H 'x-kvup-events: 6' -d "$CHAT")"
	kv_eq "  text/event-stream" text/event-stream "$(kv_header "$R.h" content-type | sed 's/;.*//')"
	kv_eq "  chunks intact" "assistant|tok0 tok1 tok2 tok3 tok4 tok5 |stop|6|true|true|true|true|0|" \
		"$(kv_sse "$R" "$SHAPE")"
done
kv_curl "$R" -N "$U/v1/completions" -H 'x-kvup-events: 3' -d '{"prompt":"x","stream":true}' >/dev/null
kv_eq "completions stream" "tok0 tok1 tok2 |stop|true" "$(kv_sse "$R" '[s.content, s.finish.join(), s.done].join("|")')"

# ---- the body decides, never Accept ----
kv_curl "$R" "$U/v1/chat/completions" -H 'Accept: application/json' -d "$CHAT" >/dev/null
kv_eq "stream:true with Accept: application/json streams" "text/event-stream true" \
	"$(kv_header "$R.h" content-type | sed 's/;.*//') $(kv_sse "$R" s.done)"
kv_curl "$R" "$U/v1/chat/completions" -H 'Accept: text/event-stream' -d '{"model":"m","stream":false}' >/dev/null
kv_eq "stream:false with Accept: text/event-stream does not" "application/json chat.completion" \
	"$(kv_header "$R.h" content-type | sed 's/;.*//') $(kv_json "$R" j.object)"

# ---- relayed event by event: with 250 ms between events the first arrives long before the last ----
t0=$(kv_now)
curl -sN --max-time 10 --cacert "$KV_TMP/certs/ca.crt" "$S/v1/chat/completions" -H 'x-kvup-events: 6' \
	-H 'x-kvup-delay-ms: 250' -d "$CHAT" |
	while IFS= read -r l; do [ -n "$l" ] && echo "$(($(kv_now) - t0)) $l"; done >"$KV_TMP/times"
first=$(head -n 1 "$KV_TMP/times" | cut -d' ' -f1)
last=$(tail -n 1 "$KV_TMP/times" | cut -d' ' -f1)
kv_eq "timed stream: all 10 events" 10 "$(wc -l <"$KV_TMP/times" | tr -d ' ')"
kv_le "timed stream: the first event arrives early (ms)" "${first:-99999}" 600
kv_ge "timed stream: the last one ~2.2 s later (ms)" "${last:-0}" 2000
kv_ge "timed stream: events arrive at distinct times (distinct 100 ms slots)" \
	"$(cut -d' ' -f1 "$KV_TMP/times" | awk '{print int($1/100)}' | sort -u | wc -l | tr -d ' ')" 8

# ---- a long stream arrives whole (no delay: the relay under load) ----
kv_curl "$R" -N "$U/v1/chat/completions" -H 'x-kvup-events: 5000' -d "$CHAT" >/dev/null
kv_eq "5000-event stream whole" "5000|true|true" "$(kv_sse "$R" '[s.usage.completion_tokens, s.done,
	s.content.split(" ").length === 5001 && s.content.endsWith("tok4999 ")].join("|")')"

# ---- a client that goes away: kvgate closes the upstream connection at once ----
before=$(kv_stat "$UP" streams_cancelled)
curl -sN --max-time 0.6 "$U/v1/chat/completions" -H 'x-kvup-events: 200' -H 'x-kvup-delay-ms: 100' \
	-d "$CHAT" >"$R" 2>/dev/null
kv_ge "cancel: the client got events before leaving" "$(grep -c '^data: ' "$R")" 2
kv_wait_for "streams_cancelled" 1000 sh -c "[ \"\$(curl -s http://127.0.0.1:$UP/kvup/stats | sed -n 's/.*\"streams_cancelled\":\([0-9]*\).*/\1/p')\" -gt $before ]"
kv_eq "cancel mid-stream: the upstream saw its connection close within 1 s" $((before + 1)) "$(kv_stat "$UP" streams_cancelled)"
before=$(kv_stat "$UP" streams_cancelled)
curl -sN --max-time 0.6 --cacert "$KV_TMP/certs/ca.crt" "$S/v1/chat/completions" -H 'x-kvup-events: 200' \
	-H 'x-kvup-delay-ms: 100' -d "$CHAT" >/dev/null 2>&1
kv_wait_for "streams_cancelled (TLS)" 1000 sh -c "[ \"\$(curl -s http://127.0.0.1:$UP/kvup/stats | sed -n 's/.*\"streams_cancelled\":\([0-9]*\).*/\1/p')\" -gt $before ]"
kv_eq "cancel mid-stream over TLS: same" $((before + 1)) "$(kv_stat "$UP" streams_cancelled)"
before=$(kv_stat "$UP" requests_cancelled)
curl -s --max-time 0.5 "$U/v1/chat/completions" -H 'x-kvup-delay-ms: 5000' -d '{"model":"m"}' >/dev/null 2>&1
kv_wait_for "requests_cancelled" 1000 sh -c "[ \"\$(curl -s http://127.0.0.1:$UP/kvup/stats | sed -n 's/.*\"requests_cancelled\":\([0-9]*\).*/\1/p')\" -gt $before ]"
kv_eq "cancel mid-request (waiting for the first byte): upstream connection closed within 1 s" \
	$((before + 1)) "$(kv_stat "$UP" requests_cancelled)"
kv_eq "kvgate serves after the cancels" 200 "$(kv_curl "$R" "$U/v1/models")"

# ---- backpressure: a 60 MB answer read at 2 MB/s does not pile up in kvgate ----
rss() { awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$KVGATE_PID/status"; }
rss0=$(rss)
curl -s --max-time 2 --limit-rate 2M "$U/v1/chat/completions" -H 'x-kvup-pad: 60000000' -d '{"model":"m"}' \
	-o /dev/null 2>/dev/null &
CURL=$!
sleep 1.5
rss1=$(rss)
wait "$CURL" 2>/dev/null
kv_le "backpressure: kvgate's memory growth while a slow client reads 60 MB (MB)" $((rss1 - rss0)) 24
kv_eq "kvgate serves after the slow reader" 200 "$(kv_curl "$R" "$U/v1/models")"
kill -0 "$KVGATE_PID" 2>/dev/null || kv_fail "kvgate died"
kv_done
