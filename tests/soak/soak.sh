#!/bin/sh
# soak.sh (issue 9 item 4): kvgate over TLS in front of two CPU kvgate-engine instances serving
# tests/data/engine_tiny, driven by tests/soak/load.mjs (a closed loop of SOAK_CONC clients: chat and
# completions, stream and not, one stream in five cancelled mid-way) for SOAK_SECONDS, on 127.0.0.1
# only. `make soak` runs it (600 s); `make soak-asan` runs it for 60 s on the ASan build.
#
# Passes when:
#   - every request ended in a complete response or a clear error (load.mjs's classes; none lost,
#     none hung), and at least one request a second was served;
#   - afterwards nothing is left in flight: kvgate_requests_in_flight is 1 (the /metrics request
#     itself), the user's in-flight 0, and both engines run no sequence (cancelled ones were freed);
#   - kvgate's RSS, sampled every SOAK_SAMPLE seconds, is flat after warm-up: the largest sample
#     after the first SOAK_WARMUP_PCT percent of the run exceeds the sample at the end of the
#     warm-up by at most SOAK_RSS_GROWTH_KB (default 4096). Why 4 MB: what kvgate holds per request
#     is bounded by the concurrency (SOAK_CONC requests x stream_buffer_bytes 256 KB at worst = 4 MB
#     with 16 clients, and in practice a few KB each, since the engines are slow producers), all of
#     it reached within the warm-up; a leak of one 64-byte object per request at this rate (~50/s)
#     over 600 s is ~2 MB, so the bound catches leaks of ~128 bytes per request and more on the
#     long run, while allocator noise stays well under it. Under ASan (BUILD=build-asan) the bound
#     is doubled (quarantine and shadow memory move by a few MB on their own);
#   - kvgate exits 0 on SIGTERM at the end, and (ASan build) its log has no LeakSanitizer or other
#     sanitizer report.
# Prints: requests, requests/s, the classes with their counts, RSS first/end-of-warm-up/last/max,
# and kvgate's status counts from /metrics. SOAK_KEEP=1 keeps the temporary folder (logs, samples).
#
# Knobs: SOAK_SECONDS (600, at most 7200), SOAK_CONC (16), SOAK_SAMPLE (5), SOAK_WARMUP_PCT (20),
# SOAK_RSS_GROWTH_KB (4096; 8192 under ASan), BUILD (build).
. "$(dirname "$0")/../integ/lib.sh"
KV_KEEP=${SOAK_KEEP:-0}

SECS=${SOAK_SECONDS:-600}
CONC=${SOAK_CONC:-16}
SAMPLE=${SOAK_SAMPLE:-5}
WARM=${SOAK_WARMUP_PCT:-20}
case $BUILD in *asan*) ASAN=1 ;; *) ASAN=0 ;; esac
GROWTH=${SOAK_RSS_GROWTH_KB:-$((4096 * (1 + ASAN)))}
[ "$SECS" -ge 10 ] && [ "$SECS" -le 7200 ] || kv_die "SOAK_SECONDS must be 10..7200 (got $SECS)"
ENGINE=$KV_BUILD/bin/kvgate-engine
MODEL=tests/data/engine_tiny
[ -x "$ENGINE" ] || kv_die "no $ENGINE: build it first"
[ -x "$KVGATE" ] || kv_die "no $KVGATE: build it first"
# LeakSanitizer reports at exit go to kvgate's log (its stderr); make a report fail the exit status
export ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=1:exitcode=23"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

# ---- two engines, kvgate with one user ----
kv_port E1
kv_port E2
for e in $E1 $E2; do
	kv_bg "engine-$e" "$ENGINE" serve "$MODEL" --host 127.0.0.1 --port "$e" --served-model-name tiny \
		--threads 1 --max-num-seqs 8
	kv_wait_port "$e" "$KV_BG_PID" 60000
done
KEY=sk-soak-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
kv_port T
kv_port P
C=$KV_TMP/kvgate.conf
kv_conf "$C" "$T" "$P" "$E1 $E2" "\"users\": [{\"name\": \"soak\", \"key_sha256\": \"$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)\",
    \"max_concurrent\": 0}],
  \"pools\": [{\"name\": \"default\", \"tokenizer\": \"$KV_ROOT/$MODEL\",
    \"upstreams\": [\"127.0.0.1:$E1\", \"127.0.0.1:$E2\"]}],"
grep -v '"pools": \[{"name": "default", "upstreams"' "$C" >"$C.2" && mv "$C.2" "$C"   # lib.sh's pools line
kv_start_kvgate "$C" "$T" "$P"
GATE=$KVGATE_PID
rss() { awk '/^VmRSS/ {print $2}' "/proc/$GATE/status" 2>/dev/null; }

# ---- the load, with RSS sampled meanwhile ----
echo "soak: $SECS s, $CONC clients, kvgate $KVGATE (pid $GATE), engines on $E1 $E2, samples every $SAMPLE s"
kv_bg load node "$KV_ROOT/tests/soak/load.mjs" "https://127.0.0.1:$T" "$KV_TMP/certs/ca.crt" "$KEY" tiny "$SECS" "$CONC"
LOAD=$KV_BG_PID
: >"$KV_TMP/rss.txt"
t0=$(kv_now)
while kill -0 "$LOAD" 2>/dev/null; do
	echo "$((($(kv_now) - t0) / 1000)) $(rss)" >>"$KV_TMP/rss.txt"
	sleep "$SAMPLE"
done
wait "$LOAD"
kv_forget "$LOAD"
grep '^load:' "$KV_TMP/load.log" | tail -n 3
res=$(grep '^{' "$KV_TMP/load.log")
[ -n "$res" ] || kv_die "load.mjs printed no result: $(tail -n 20 "$KV_TMP/load.log")"
echo "soak: result $res"
J() { printf '%s' "$res" | kv_json /dev/stdin "$1"; }

# ---- every request accounted for ----
kv_ge "requests per second sustained (x10)" "$(J 'Math.round(j.per_s * 10)')" 10
kv_eq "no request lost or hung (complete, cancelled on purpose or a clear error)" 0 "$(J j.lost)"
kv_eq "  classes add up to the requests" "$(J j.requests)" "$(J 'Object.values(j.classes).reduce((a, b) => a + b, 0)')"
kv_ge "  most complete" "$(J 'Math.round(100 * (j.classes.ok || 0) / j.requests)')" 50
[ "$(J j.lost)" = 0 ] || echo "soak: lost samples: $(J 'j.lost_samples.join("; ")')"

# ---- nothing left in flight ----
sleep 1
curl -s --max-time 5 "http://127.0.0.1:$P/metrics" >"$KV_TMP/metrics.txt"
kv_le "kvgate_requests_in_flight after the load (1: the /metrics request itself)" "$(kv_metric 'kvgate_requests_in_flight' "$KV_TMP/metrics.txt")" 1
kv_eq "the user's requests in flight after the load" 0 "$(kv_metric 'kvgate_user_in_flight\{user="soak"' "$KV_TMP/metrics.txt")"
for e in $E1 $E2; do
	n=$(curl -s --max-time 5 "http://127.0.0.1:$e/metrics" | sed -n 's/^vllm:num_requests_running[{ ][^0-9]*\([0-9]*\).*/\1/p' | head -n 1)
	kv_eq "engine $e runs no sequence after the load (cancels freed)" 0 "$n"
done
echo "soak: kvgate statuses: $(grep '^kvgate_requests_total' "$KV_TMP/metrics.txt" | sed 's/.*status="\([0-9]*\)"} \(.*\)/\1:\2/' |
	awk -F: '{s[$1] += $2} END {for (k in s) printf "%s=%d ", k, s[k]}')"

# ---- RSS flat after warm-up ----
n=$(wc -l <"$KV_TMP/rss.txt" | tr -d ' ')
w=$((n * WARM / 100))
[ "$w" -ge 1 ] || w=1
first=$(sed -n 1p "$KV_TMP/rss.txt" | cut -d' ' -f2)
warm=$(sed -n "${w}p" "$KV_TMP/rss.txt" | cut -d' ' -f2)
last=$(tail -n 1 "$KV_TMP/rss.txt" | cut -d' ' -f2)
max=$(cut -d' ' -f2 "$KV_TMP/rss.txt" | sort -n | tail -n 1)
maxafter=$(tail -n +"$((w + 1))" "$KV_TMP/rss.txt" | cut -d' ' -f2 | sort -n | tail -n 1)
echo "soak: kvgate RSS (KB): first $first, end of warm-up (sample $w of $n) $warm, last $last, max $max, max after warm-up ${maxafter:-$warm}"
echo "soak: RSS samples (s KB): $(tr '\n' ',' <"$KV_TMP/rss.txt" | sed 's/,$//' | awk -F, '{for (i = 1; i <= NF; i += (NF > 24 ? int(NF / 24) : 1)) printf "%s  ", $i}')"
kv_le "kvgate RSS growth after warm-up (KB)" $((${maxafter:-$warm} - warm)) "$GROWTH"

# ---- SIGTERM: exit 0, no sanitizer report ----
kill -TERM "$GATE"
gone() { ! kill -0 "$1" 2>/dev/null; }
if kv_wait_for "kvgate exits" 20000 gone "$GATE"; then
	wait "$GATE"
	kv_eq "kvgate exits 0 on SIGTERM (23: LeakSanitizer found leaks)" 0 $?
else kv_fail "kvgate still running 20 s after SIGTERM"; fi
kv_forget "$GATE"
if grep -q 'Sanitizer\|runtime error:' "$KVGATE_LOG"; then
	kv_fail "sanitizer report in kvgate's log:"
	grep -A 30 'Sanitizer\|runtime error:' "$KVGATE_LOG" | head -n 60
else kv_ok "no sanitizer report (leaks, memory errors, UB) in kvgate's log$([ $ASAN = 1 ] && echo ' (ASan build)')"; fi
kv_done
