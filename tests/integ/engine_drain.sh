# engine_drain.sh: kvgate-engine on SIGTERM: new connections refused at once, the request in flight
# streams to its end, then exit 0; --shutdown-timeout cuts a long one short; a second signal stops
# at once.
. "$(dirname "$0")/lib.sh"

T=$KV_TMP

# exit_of PID MS: wait for PID (a child of this shell) up to MS; its exit status into RC ("alive"
# if it is still running); run it in this shell, not in $(...), which could not wait for it
exit_of() {
	end=$(($(kv_now) + $2))
	while kill -0 "$1" 2>/dev/null && [ "$(kv_now)" -lt "$end" ]; do sleep 0.05; done
	if kill -0 "$1" 2>/dev/null; then
		RC=alive
		return
	fi
	wait "$1"
	RC=$?
	kv_forget "$1"
}

running() { [ "$(kv_engine_metric "$1" vllm:num_requests_running)" = 1 ]; }

# long_stream PORT OUT: a 400-token stream into OUT in the background (its pid in CPID), once it runs
long_stream() {
	curl -sN --max-time 30 -o "$2" "http://127.0.0.1:$1/v1/completions" \
		-d '{"prompt":"hello","max_tokens":400,"ignore_eos":true,"stream":true}' &
	CPID=$!
	kv_wait_for "a sequence runs" 3000 running "$1" || kv_fail "the stream on $1 did not start"
}

# ---- drain: the stream in flight finishes, new connections are refused ----
STEP_MS=20 kv_start_engine P
E=$KV_BG_PID
curl -sN --max-time 20 -o "$T/s1.out" "http://127.0.0.1:$P/v1/completions" \
	-d '{"prompt":"hello","max_tokens":60,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}' &
c1=$!
kv_wait_for "a sequence runs" 3000 running "$P" || kv_fail "the stream did not start"
kill -TERM "$E"
kv_wait_for "new connections refused" 1000 sh -c "curl -s --max-time 1 -o /dev/null http://127.0.0.1:$P/health; [ \$? = 7 ]" &&
	kv_ok "after SIGTERM a new connection is refused" || kv_fail "the engine still accepts after SIGTERM"
wait "$c1"
kv_eq "the stream in flight ended normally" 0 $?
kv_file_has "the stream reached [DONE]" "data: \[DONE\]" "$T/s1.out"
kv_file_has "with all 60 tokens" '"completion_tokens":60' "$T/s1.out"
exit_of "$E" 3000
kv_eq "then the engine exited 0" 0 "$RC"
kv_file_has "the log says it drained" "draining 1 request" "$KV_TMP/engine-$P.log"
kv_file_has "and that every request was answered" "every request answered" "$KV_TMP/engine-$P.log"

# ---- an idle engine stops at once ----
kv_start_engine Q
E=$KV_BG_PID
t0=$(kv_now)
kill -TERM "$E"
exit_of "$E" 3000
kv_eq "idle: exit 0" 0 "$RC"
kv_le "idle: at once (ms)" $(($(kv_now) - t0)) 2000

# ---- --shutdown-timeout cuts long requests short, each with an error ----
STEP_MS=50 kv_start_engine R --shutdown-timeout 1
E=$KV_BG_PID
long_stream "$R" "$T/s2.out"
curl -s --max-time 30 -o "$T/n2.out" -w '%{http_code}' "http://127.0.0.1:$R/v1/completions" \
	-d '{"prompt":"hello","max_tokens":400,"ignore_eos":true}' >"$T/n2.code" &
NPID=$!
running2() { [ "$(kv_engine_metric "$1" vllm:num_requests_running)" = 2 ]; }
kv_wait_for "both run" 3000 running2 "$R" || kv_fail "the non-streamed request on $R did not start"
t0=$(kv_now)
kill -TERM "$E"
exit_of "$E" 6000
kv_eq "timeout: exit 0" 0 "$RC"
dt=$(($(kv_now) - t0))
kv_ge "timeout: not before 1 s (ms)" "$dt" 900
kv_le "timeout: long before the 20 s the request needs (ms)" "$dt" 5000
wait "$CPID"
kv_eq "the cut stream ends whole (curl status)" 0 $?
kv_match "the cut stream: an error event" 'data: \{"error":\{"message":"the engine is shutting down' "$(cat "$T/s2.out")"
kv_match "then [DONE]" 'data: \[DONE\]$' "$(cat "$T/s2.out")"
wait "$NPID"
kv_eq "the cut non-streamed request: 503" 503 "$(cat "$T/n2.code")"
kv_eq "with an OpenAI error" "the engine is shutting down (--shutdown-timeout passed)" "$(kv_jval "$T/n2.out" 'j.error.message')"
kv_file_has "the log names the timeout" "shutdown-timeout \\(1 s\\) passed" "$KV_TMP/engine-$R.log"

# ---- a second signal stops at once ----
STEP_MS=50 kv_start_engine S
E=$KV_BG_PID
long_stream "$S" "$T/s3.out"
t0=$(kv_now)
kill -TERM "$E"
sleep 0.2
kill -INT "$E"
exit_of "$E" 5000
kv_eq "second signal: exit 0" 0 "$RC"
kv_le "second signal: long before the 20 s the request needs (ms)" $(($(kv_now) - t0)) 3000
wait "$CPID"
kv_file_has "the log says so" "again: stopping now" "$KV_TMP/engine-$S.log"

# ---- the flag is checked ----
"$KV_ENGINE" serve "$KV_ENGINE_MODEL" --shutdown-timeout -1 >"$T/f1" 2>&1
kv_eq "--shutdown-timeout -1 refused" 2 $?
kv_file_has "and why" "shutdown-timeout" "$T/f1"
kv_done
