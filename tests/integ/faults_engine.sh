#!/bin/sh
# faults_engine.sh (issue 9 item 3): a real kvgate-engine killed with SIGKILL mid-stream while another
# stream runs on the second instance of the pool. The killed engine's client gets a final
# `data: {"error":...}` event (no [DONE]) soon after the kill; the other stream completes whole;
# nothing hangs; the user of the killed stream gets its slot back; health checks eject the dead
# instance (requests meanwhile all answered by the survivor) and re-admit it once an engine is
# restarted on the same port, after which it serves again. Two CPU engines on tests/data/engine_tiny,
# slowed by KVGATE_ENGINE_STEP_DELAY_MS so that streams last a few seconds.
. "$(dirname "$0")/lib.sh"

ENGINE=$KV_BUILD/bin/kvgate-engine
MODEL=tests/data/engine_tiny
[ -x "$ENGINE" ] || kv_die "no $ENGINE"
[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"

# eng_run PORT: start an engine on PORT (pid in ENG_PID)
eng_run() {
	kv_bg "engine-$1-$(kv_now)" env KVGATE_ENGINE_STEP_DELAY_MS=30 "$ENGINE" serve "$MODEL" --host 127.0.0.1 \
		--port "$1" --served-model-name tiny --threads 1
	ENG_PID=$KV_BG_PID
	kv_wait_port "$1" "$ENG_PID" 15000
}
kv_port E1
kv_port E2
eng_run "$E1"
PID1=$ENG_PID
eng_run "$E2"
PID2=$ENG_PID

h() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
kv_port P
C=$KV_TMP/kvgate.conf
R=$KV_TMP/r
U=http://127.0.0.1:$P
kv_conf "$C" "" "$P" "$E1 $E2" "\"health_interval_ms\": 150, \"health_timeout_ms\": 300, \"health_fails\": 2,
  \"upstream_connect_timeout_ms\": 300,
  \"user_defaults\": {\"max_concurrent\": 1},
  \"users\": [{\"name\": \"alice\", \"key_sha256\": \"$(h sk-alice-0123)\"},
              {\"name\": \"bob\", \"key_sha256\": \"$(h sk-bob-0123)\"}],"
kv_start_kvgate "$C" "$P"
A="Authorization: Bearer sk-alice-0123"
B="Authorization: Bearer sk-bob-0123"

running() { curl -s --max-time 2 "http://127.0.0.1:$1/metrics" | sed -n 's/^vllm:num_requests_running[{ ][^0-9]*\([0-9]*\).*/\1/p' | head -n 1; }
health_of() {   # health_of PORT: kvgate's view of upstream 127.0.0.1:PORT (true/false)
	curl -s --max-time 2 "$U/health" >"$KV_TMP/health.json"
	kv_json "$KV_TMP/health.json" "String((j.upstreams.find(u => JSON.stringify(u).includes(':$1\"')) || {}).healthy)" 2>/dev/null
}
is_healthy() { [ "$(health_of "$1")" = true ]; }
is_down() { [ "$(health_of "$1")" = false ]; }
kv_wait_for "E1 healthy" 5000 is_healthy "$E1" &&
	kv_wait_for "E2 healthy" 5000 is_healthy "$E2" || kv_die "engines not healthy in kvgate: $(cat "$KV_TMP/health.json")"

# stream STREAMLOG KEY PROMPT: a 150-token stream (~5 s) in the background; pid in ST_PID
stream() {
	kv_bg "$1" curl -sN --max-time 30 "$U/v1/completions" -H "$2" -H 'content-type: application/json' \
		-d "{\"model\":\"tiny\",\"prompt\":\"$3\",\"max_tokens\":150,\"ignore_eos\":true,\"temperature\":0,\"stream\":true,\"stream_options\":{\"include_usage\":true}}"
	ST_PID=$KV_BG_PID
}
busy() { [ "$(running "$1")" -ge 1 ] 2>/dev/null; }

# ---- alice's stream first: whichever engine runs it is the victim ----
stream sA "$A" "def alpha(x):"
SA=$ST_PID
kv_wait_for "alice's stream running" 5000 sh -c "[ \"\$(curl -s http://127.0.0.1:$E1/metrics http://127.0.0.1:$E2/metrics | grep -c '^vllm:num_requests_running.* 1')\" -ge 1 ]" ||
	kv_die "alice's stream never ran"
if busy "$E1"; then VICTIM=$E1 VPID=$PID1 OTHER=$E2; else VICTIM=$E2 VPID=$PID2 OTHER=$E1; fi
stream sB "$B" "class Beta:"
SB=$ST_PID
kv_wait_for "bob's stream running on the other engine" 3000 busy "$OTHER" ||
	kv_fail "bob's stream did not go to the idle instance (victim $(running "$VICTIM"), other $(running "$OTHER"))"
sleep 0.5
kv_ge "alice has content before the kill (events)" "$(grep -c '^data: ' "$KV_TMP/sA.log")" 3

# ---- SIGKILL the victim mid-stream ----
t0=$(kv_now)
kill -KILL "$VPID"
gone() { ! kill -0 "$1" 2>/dev/null; }
if kv_wait_for "alice's client ends" 3000 gone "$SA"; then
	kv_le "killed engine: alice's stream ends soon after the kill (ms)" $(($(kv_now) - t0)) 2000
else kv_fail "alice's stream still open 3 s after its engine was killed"; fi
kv_forget "$SA"
kv_eq "killed engine: a final error event, no [DONE]" "true|false" \
	"$(kv_sse "$KV_TMP/sA.log" '[s.error_last, s.done].join("|")')"
kv_match "  the error event is OpenAI-shaped" '"message":".+".*"type":"[a-z_]+"' \
	"$(kv_sse "$KV_TMP/sA.log" 'JSON.stringify(s.error)')"
kv_ge "  the tokens before the kill were relayed (chunks)" "$(kv_sse "$KV_TMP/sA.log" 's.chunks.length')" 3
kv_eq "bob's stream is still running on the other engine" 1 "$(running "$OTHER")"

# ---- the dead instance is ejected; requests meanwhile go to the survivor ----
if kv_wait_for "victim ejected" 2000 is_down "$VICTIM"; then kv_ok "health checks eject the killed instance"
else kv_fail "killed instance still healthy in /health after 2 s: $(cat "$KV_TMP/health.json")"; fi
curl -s --max-time 2 "$U/metrics" >"$KV_TMP/m"
kv_eq "  kvgate_upstream_healthy of the killed instance" 0 \
	"$(kv_metric "kvgate_upstream_healthy\\{[^}]*upstream=\"127.0.0.1:$VICTIM\"" "$KV_TMP/m")"
# alice's slot came back: her requests are served (one at a time, max_concurrent 1)
codes=""
for i in 1 2 3 4; do
	codes="$codes$(kv_curl "$R" "$U/v1/completions" -H "$A" -d '{"model":"tiny","prompt":"x","max_tokens":2}') "
done
kv_eq "alice's slot released: 4 requests while one instance is down, all 200" "200 200 200 200 " "$codes"

# ---- bob's stream completes whole ----
if kv_wait_for "bob's client ends" 10000 gone "$SB"; then kv_ok "bob's stream ends (no hang)"
else kv_fail "bob's stream still open 10 s after the kill"; fi
kv_forget "$SB"
kv_eq "the other instance's stream completes: 150 tokens, finish length, [DONE], no error" "150|length|true|null" \
	"$(kv_sse "$KV_TMP/sB.log" '[s.usage && s.usage.completion_tokens, s.finish.join(), s.done, JSON.stringify(s.error)].join("|")')"
curl -s --max-time 2 "$U/metrics" >"$KV_TMP/m"
kv_eq "no user slot held after both streams ended" 0 "$(kv_metric 'kvgate_user_in_flight\{' "$KV_TMP/m")"

# ---- restart an engine on the same port: re-admitted, then served ----
eng_run "$VICTIM"
if kv_wait_for "victim re-admitted" 4000 is_healthy "$VICTIM"; then kv_ok "the restarted instance is re-admitted"
else kv_fail "restarted instance not healthy in /health after 4 s: $(cat "$KV_TMP/health.json")"; fi
# two concurrent streams of different users: the balance sends one to each instance
stream sC "$A" "def gamma(y):"
SC=$ST_PID
kv_wait_for "first stream runs" 3000 sh -c "[ \"\$(curl -s http://127.0.0.1:$E1/metrics http://127.0.0.1:$E2/metrics | grep -c '^vllm:num_requests_running.* 1')\" -ge 1 ]"
stream sD "$B" "class Delta:"
SD=$ST_PID
both() { busy "$VICTIM" && busy "$OTHER"; }
if kv_wait_for "both instances busy" 3000 both; then kv_ok "the restarted instance serves again (one stream on each)"
else kv_fail "after re-admission: running victim=$(running "$VICTIM") other=$(running "$OTHER")"; fi
kv_wait_for "streams end" 15000 sh -c "! kill -0 $SC 2>/dev/null && ! kill -0 $SD 2>/dev/null" || kv_fail "streams after restart hang"
kv_forget "$SC"
kv_forget "$SD"
kv_eq "  both complete" "true true" "$(kv_sse "$KV_TMP/sC.log" s.done) $(kv_sse "$KV_TMP/sD.log" s.done)"
kill -0 "$KVGATE_PID" 2>/dev/null || kv_fail "kvgate died"
if grep -q 'sk-alice-0123\|sk-bob-0123' "$KV_TMP"/*.log "$KV_TMP/access.log"; then kv_fail "an API key appears in a log"
else kv_ok "no API key in any log (kvgate, access, engines)"; fi
kv_done
