#!/bin/sh
# proxy_users.sh: API keys and per-user limits (issue 7 item 1): `kvgate hash-key`; 401 without or
# with a wrong key; the key never reaches the engine, the user's name does; a user at its
# concurrency limit gets 429 while another is served; the slot comes back on every ending (done,
# client gone mid-stream, engine dies mid-stream, engine error, first-byte timeout); a bounded wait
# queue (served when a slot frees, 429 when full or after its timeout); requests per minute.
. "$(dirname "$0")/lib.sh"

[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"

# ---- hash-key ----
want=$(printf 'sk-alice' | sha256sum | cut -d' ' -f1)
kv_eq "hash-key from standard input = sha256" "$want" "$(printf 'sk-alice\n' | "$KVGATE" hash-key)"
kv_eq "hash-key KEY = sha256" "$want" "$("$KVGATE" hash-key sk-alice)"
h() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

kv_start_kvup UP up1
kv_port P
C=$KV_TMP/kvgate.conf
R=$KV_TMP/r
U=http://127.0.0.1:$P
kv_conf "$C" "" "$P" "$UP" "\"upstream_first_byte_timeout_ms\": 400,
  \"user_defaults\": {\"max_concurrent\": 1},
  \"users\": [
    {\"name\": \"alice\", \"key_sha256\": \"$(h sk-alice)\"},
    {\"name\": \"bob\", \"key_sha256\": \"$(h sk-bob)\", \"queue\": 1, \"queue_timeout_ms\": 600},
    {\"name\": \"carol\", \"key_sha256\": \"$(h sk-carol)\", \"max_concurrent\": 0, \"requests_per_minute\": 2},
    {\"name\": \"dave\", \"key_sha256\": \"$(h sk-dave)\", \"requests_per_minute\": 3}
  ],"
kv_start_kvgate "$C" "$P"
A="Authorization: Bearer sk-alice"
B="Authorization: Bearer sk-bob"
CH='{"model":"m","stream":true}'

# ---- keys ----
kv_eq "no key -> 401" 401 "$(kv_curl "$R" "$U/v1/models")"
kv_err "401 no key" "$R" invalid_request_error
kv_match "401 code invalid_api_key" 'invalid_api_key' "$(cat "$R")"
kv_eq "wrong key -> 401" 401 "$(kv_curl "$R" "$U/v1/models" -H 'Authorization: Bearer sk-mallory')"
kv_match "401 says the key is wrong" 'Incorrect API key' "$(cat "$R")"
kv_eq "a key's prefix is not the key -> 401" 401 "$(kv_curl "$R" "$U/v1/models" -H 'Authorization: Bearer sk-alic')"
kv_eq "right key -> 200" 200 "$(kv_curl "$R" "$U/v1/models" -H "$A")"
kv_eq "scheme is case-insensitive" 200 "$(kv_curl "$R" "$U/v1/models" -H 'Authorization: bearer sk-alice')"
kv_eq "/health needs no key" 200 "$(kv_curl "$R" "$U/health")"
kv_eq "echo through kvgate" 200 "$(kv_curl "$R" "$U/v1/echo" -H "$A" -d 'x')"
kv_eq "the engine sees the user's name" alice "$(kv_json "$R" 'j.headers["x-kvgate-user"]')"
kv_eq "the engine never sees the key" undefined "$(kv_json "$R" 'String(j.headers["authorization"])')"
kv_eq "a client cannot claim a user name" 200 "$(kv_curl "$R" "$U/v1/echo" -H "$A" -H 'x-kvgate-user: bob' -d 'x')"
kv_eq "  (the header is replaced)" alice "$(kv_json "$R" 'j.headers["x-kvgate-user"]')"
if grep -q 'sk-alice' "$KV_TMP/access.log" "$KVGATE_LOG"; then kv_fail "a key appears in a log"
else kv_ok "no key in the logs"; fi
kv_match "the access log names the user" 'user=alice' "$(cat "$KV_TMP/access.log")"

# ---- concurrency: alice holds her only slot with a slow stream ----
slow() {  # slow KEYHEADER LOGNAME: a 3 s stream in the background; pid in SLOW_PID
	curl -sN --max-time 20 "$U/v1/chat/completions" -H "$1" -H 'x-kvup-events: 30' \
		-H 'x-kvup-delay-ms: 100' -d "$CH" >"$KV_TMP/$2.out" 2>&1 &
	SLOW_PID=$!
	KV_PIDS="$KV_PIDS $SLOW_PID"
}
alice_busy() { [ "$(kv_stat "$UP" streams_started)" -gt "$s0" ]; }
s0=$(kv_stat "$UP" streams_started)
slow "$A" slow1
kv_wait_for "alice's stream started" 3000 alice_busy || kv_fail "the slow stream did not start"
kv_eq "alice's second request -> 429" 429 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{}')"
kv_err "429 concurrency" "$R" rate_limit_error
kv_ge "  with Retry-After >= 1" "$(kv_header "$R.h" retry-after)" 1
kv_eq "bob is served meanwhile" 200 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$B" -d '{}')"

# the client goes away mid-stream: the slot must come back
kill "$SLOW_PID" 2>/dev/null
free_again() { [ "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{}')" = 200 ]; }
if kv_wait_for "alice's slot after a disconnect" 2000 free_again; then kv_ok "slot released when the client disconnects mid-stream"
else kv_fail "alice is locked out after her client disconnected"; fi

# every other ending gives it back too
kv_curl "$R" "$U/v1/chat/completions" -H "$A" -H 'x-kvup-die-after: 2' -d "$CH" >/dev/null
kv_match "engine dies mid-stream -> error event" '"error"' "$(cat "$R")"
kv_eq "  then alice is served" 200 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{}')"
kv_eq "engine answers 500" 500 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -H 'x-kvup-status: 500' -d '{}')"
kv_eq "  then alice is served" 200 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{}')"
kv_eq "engine hangs -> 504" 504 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -H 'x-kvup-hang: 1' -d '{}')"
kv_eq "  then alice is served" 200 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{}')"
kv_eq "bad JSON (refused before the limit stage)" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{')"
kv_eq "  then alice is served" 200 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{}')"

# ---- bob's queue: one may wait ----
s0=$(kv_stat "$UP" streams_started)
curl -sN --max-time 20 "$U/v1/chat/completions" -H "$B" -H 'x-kvup-events: 2' -H 'x-kvup-delay-ms: 80' \
	-d "$CH" >"$KV_TMP/b1.out" 2>&1 &
B1=$!
KV_PIDS="$KV_PIDS $B1"
bob_busy() { [ "$(kv_stat "$UP" streams_started)" -gt "$s0" ]; }
kv_wait_for "bob's stream started" 3000 bob_busy || kv_fail "bob's stream did not start"
t0=$(kv_now)
kv_curl "$KV_TMP/b2" "$U/v1/chat/completions" -H "$B" -d '{}' >"$KV_TMP/b2.code" &
B2=$!
sleep 0.1
kv_eq "a third bob request while one waits -> 429" 429 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$B" -d '{}')"
wait "$B2"
kv_eq "the waiting request is served once the slot frees" 200 "$(cat "$KV_TMP/b2.code")"
kv_ge "  after waiting (ms)" $(($(kv_now) - t0)) 150
wait "$B1"
# a wait longer than queue_timeout_ms
s0=$(kv_stat "$UP" streams_started)
slow "$B" slow2
kv_wait_for "bob's long stream started" 3000 bob_busy || kv_fail "bob's long stream did not start"
t0=$(kv_now)
kv_eq "waiting past queue_timeout_ms -> 429" 429 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$B" -d '{}')"
kv_ge "  after the timeout (ms)" $(($(kv_now) - t0)) 550
kv_match "  says it waited" 'waited 600 ms' "$(cat "$R")"
kill "$SLOW_PID" 2>/dev/null

# ---- carol: 2 requests per minute (the model list, answered by kvgate, costs none) ----
C_="Authorization: Bearer sk-carol"
kv_eq "carol 1" 200 "$(kv_curl "$R" "$U/v1/echo" -H "$C_" -d x)"
kv_eq "carol 2" 200 "$(kv_curl "$R" "$U/v1/echo" -H "$C_" -d x)"
kv_eq "carol 3 -> 429" 429 "$(kv_curl "$R" "$U/v1/echo" -H "$C_" -d x)"
kv_eq "  x-ratelimit-limit-requests" 2 "$(kv_header "$R.h" x-ratelimit-limit-requests)"
kv_eq "  x-ratelimit-remaining-requests" 0 "$(kv_header "$R.h" x-ratelimit-remaining-requests)"
kv_ge "  Retry-After (s)" "$(kv_header "$R.h" retry-after)" 1
kv_eq "carol's model list still answered" 200 "$(kv_curl "$R" "$U/v1/models" -H "$C_")"

# ---- dave: 1 at once, 3 a minute: his 429s for concurrency give the minute's tokens back ----
D_="Authorization: Bearer sk-dave"
s0=$(kv_stat "$UP" streams_started)
dave_busy() { [ "$(kv_stat "$UP" streams_started)" -gt "$s0" ]; }
curl -sN --max-time 20 "$U/v1/chat/completions" -H "$D_" -H 'x-kvup-events: 10' -H 'x-kvup-delay-ms: 100' \
	-d "$CH" >"$KV_TMP/dave.out" 2>&1 &
DAVE_PID=$!
KV_PIDS="$KV_PIDS $DAVE_PID"
kv_wait_for "dave's stream runs" 3000 dave_busy || kv_fail "dave's stream did not start"
kv_eq "dave 2 -> 429 (concurrency)" 429 "$(kv_curl "$R" "$U/v1/echo" -H "$D_" -d x)"
kv_eq "dave 3 -> 429 (concurrency)" 429 "$(kv_curl "$R" "$U/v1/echo" -H "$D_" -d x)"
kv_eq "dave's model list answered while busy" 200 "$(kv_curl "$R" "$U/v1/models" -H "$D_")"
wait "$DAVE_PID"
kv_eq "dave, free again: served (2 of his 3 a minute left)" 200 "$(kv_curl "$R" "$U/v1/echo" -H "$D_" -d x)"
kv_eq "  and his third" 200 "$(kv_curl "$R" "$U/v1/echo" -H "$D_" -d x)"
kv_eq "  a fourth -> 429" 429 "$(kv_curl "$R" "$U/v1/echo" -H "$D_" -d x)"

# ---- metrics ----
kv_curl "$R" "$U/metrics" >/dev/null
kv_ge "rejections by reason: concurrency" "$(kv_metric 'kvgate_user_rejections_total\{user="alice",reason="concurrency"' "$R")" 1
kv_ge "rejections by reason: auth" "$(kv_metric 'kvgate_user_rejections_total\{user="-",reason="auth"' "$R")" 3
kv_ge "rejections by reason: queue_timeout" "$(kv_metric 'kvgate_user_rejections_total\{user="bob",reason="queue_timeout"' "$R")" 1
kv_eq "no slot leaked: alice in flight" 0 "$(kv_metric 'kvgate_user_in_flight\{user="alice"' "$R")"

kv_done
