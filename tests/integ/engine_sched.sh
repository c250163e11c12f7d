# engine_sched.sh: kvgate-engine's scheduler seen from outside: a closed connection frees its KV
# blocks within a step, KV exhaustion preempts (recompute) and every request still completes with
# the output it has alone, prefix caching on/off gives the same output; flags refused as documented.
. "$(dirname "$0")/lib.sh"

T=$KV_TMP

# ---- flags ----
"$KV_ENGINE" serve --help >"$T/help" 2>&1
for f in host port served-model-name dtype kv-cache-dtype max-model-len gpu-memory-utilization kv-cache-memory \
	max-num-seqs max-num-batched-tokens block-size enable-prefix-caching no-enable-prefix-caching device seed \
	trust-remote-code; do
	grep -q -- "--$f " "$T/help" || kv_fail "--help lacks --$f"
done
kv_ok "--help lists the flags"
"$KV_ENGINE" serve "$KV_ENGINE_MODEL" --no-such-flag >"$T/f1" 2>&1
kv_eq "unknown flag refused" 2 $?
kv_file_has "unknown flag named" "no-such-flag" "$T/f1"
"$KV_ENGINE" serve "$KV_ENGINE_MODEL" --kv-cache-dtype fp8_e5m2 >"$T/f2" 2>&1
kv_eq "fp8_e5m2 refused" 2 $?
kv_file_has "fp8_e5m2: why" "mantissa" "$T/f2"
"$KV_ENGINE" serve "$KV_ENGINE_MODEL" --kv-cache-memory 1e300G >"$T/f3" 2>&1
kv_eq "--kv-cache-memory 1e300G refused" 2 $?
kv_file_has "  with the flag named" "kv-cache-memory" "$T/f3"

# ---- cancel on disconnect frees blocks within a step ----
STEP_MS=20 kv_start_engine P
curl -sN --max-time 10 -o "$T/cancel.out" "http://127.0.0.1:$P/v1/completions" \
	-d '{"prompt":"hello world, this is a test","max_tokens":200,"ignore_eos":true,"stream":true}' &
cpid=$!
kv_wait_for "a sequence runs" 3000 sh -c "[ \"\$(curl -s http://127.0.0.1:$P/metrics | sed -n 's/^vllm:num_requests_running{[^}]*} //p')\" = 1 ]"
used=$(kv_engine_metric "$P" kvgate_engine_memory_kv_cache_used_bytes)
kv_ne "blocks in use while streaming" 0 "${used%.*}"
kill "$cpid" 2>/dev/null
wait "$cpid" 2>/dev/null
t0=$(kv_now)
kv_wait_for "blocks freed after the client left" 1000 sh -c "[ \"\$(curl -s http://127.0.0.1:$P/metrics | sed -n 's/^kvgate_engine_memory_kv_cache_used_bytes{[^}]*} //p')\" = 0 ]" \
	&& kv_ok "cancelled stream freed its blocks ($(($(kv_now) - t0)) ms, steps of 20 ms)" || kv_fail "blocks still used after the client left"
kv_eq "nothing running after cancel" 0 "$(kv_engine_metric "$P" vllm:num_requests_running)"
gen=$(kv_engine_metric "$P" vllm:generation_tokens_total)
kv_le "the cancelled sequence stopped early" "${gen%.*}" 150

# ---- preemption: 12 blocks (192 tokens) for 6 sequences of ~90 tokens each ----
kv_start_engine Q --num-gpu-blocks-override 12 --max-model-len 128 --no-enable-prefix-caching
i=0
while [ $i -lt 6 ]; do
	printf '{"prompt":"request %d: the quick brown fox","max_tokens":80,"ignore_eos":true,"temperature":0.7,"seed":%d}' $i $i >"$T/p$i"
	kv_post "$Q" /v1/completions "$(cat "$T/p$i")" "$T/alone$i" >/dev/null
	i=$((i + 1))
done
pids=""
i=0
while [ $i -lt 6 ]; do
	kv_post "$Q" /v1/completions "$(cat "$T/p$i")" "$T/conc$i" >"$T/code$i" &
	pids="$pids $!"
	i=$((i + 1))
done
wait $pids
ok=0
i=0
while [ $i -lt 6 ]; do
	[ "$(cat "$T/code$i")" = 200 ] && [ "$(kv_jval "$T/alone$i" 'j.choices[0].text')" = "$(kv_jval "$T/conc$i" 'j.choices[0].text')" ] &&
		[ "$(kv_jval "$T/conc$i" 'j.usage.completion_tokens')" = 80 ] && ok=$((ok + 1))
	i=$((i + 1))
done
kv_eq "under KV exhaustion every request completes with its own output" 6 "$ok"
pre=$(kv_engine_metric "$Q" vllm:num_preemptions)
kv_ge "preemptions happened" "${pre%.*}" 1
kv_eq "all blocks free afterwards" 12 "$(kv_engine_metric "$Q" kvgate_engine_kv_blocks_free)"

# ---- prefix caching off gives the same output as on (with hits) ----
kv_start_engine R --no-enable-prefix-caching
body='{"prompt":"def main(): return 0\nint main(void) { return 0; }\nthe quick brown fox jumps over the lazy dog.","max_tokens":16,"ignore_eos":true,"temperature":0.5,"seed":3}'
kv_post "$R" /v1/completions "$body" "$T/off" >/dev/null
kv_start_engine S
kv_post "$S" /v1/completions "$body" "$T/on1" >/dev/null
kv_post "$S" /v1/completions "$body" "$T/on2" >/dev/null
kv_ge "second request hit the cache" "$(kv_jval "$T/on2" 'j.usage.prompt_tokens_details.cached_tokens')" 16
kv_eq "cache on (hit) = cache off" "$(kv_jval "$T/off" 'j.choices[0].text')" "$(kv_jval "$T/on2" 'j.choices[0].text')"
kv_eq "no hits with caching off" 0 "$(kv_engine_metric "$R" vllm:prefix_cache_hits)"

# ---- fairness: with one slot, a second user's request goes before the first user's backlog ----
# Each request takes 40 steps of 20 ms (0.8 s): alice's three and bob's one all arrive while
# alice's first runs, so the order in which they finish is the scheduler's, not the clients'.
STEP_MS=20 kv_start_engine U --max-num-seqs 1
for i in 1 2 3; do
	(curl -s -o "$T/fa$i" --max-time 30 -H 'x-kvgate-user: alice' "http://127.0.0.1:$U/v1/completions" \
		-d '{"prompt":"a","max_tokens":40,"ignore_eos":true}'; date +%s%3N >"$T/fat$i") &
	eval "fa$i=\$!"
	sleep 0.1
done
(curl -s -o "$T/fb" --max-time 30 -H 'x-kvgate-user: bob' "http://127.0.0.1:$U/v1/completions" \
	-d '{"prompt":"b","max_tokens":40,"ignore_eos":true}'; date +%s%3N >"$T/fbt") &
fb=$!
wait $fa1 $fa2 $fa3 $fb
kv_le "fair: bob (arrived last) finished before alice's third (ms)" "$(cat "$T/fbt")" "$(cat "$T/fat3")"

# ---- --seed: the draws for requests without a seed repeat across runs (as vLLM's --seed) ----
unseeded='{"prompt":"def","max_tokens":24,"ignore_eos":true,"temperature":1.0}'
kv_start_engine V1 --seed 7
kv_start_engine V2 --seed 7
kv_start_engine V3 --seed 8
for v in 1 2 3; do
	eval "p=\$V$v"
	kv_post "$p" /v1/completions "$unseeded" "$T/seed$v.a" >/dev/null
	kv_post "$p" /v1/completions "$unseeded" "$T/seed$v.b" >/dev/null
done
kv_eq "--seed 7 twice: the first unseeded request samples the same" "$(kv_jval "$T/seed1.a" 'j.choices[0].text')" "$(kv_jval "$T/seed2.a" 'j.choices[0].text')"
kv_eq "  and the second" "$(kv_jval "$T/seed1.b" 'j.choices[0].text')" "$(kv_jval "$T/seed2.b" 'j.choices[0].text')"
kv_ne "  consecutive requests draw different seeds" "$(kv_jval "$T/seed1.a" 'j.choices[0].text')" "$(kv_jval "$T/seed1.b" 'j.choices[0].text')"
kv_ne "--seed 8 samples otherwise" "$(kv_jval "$T/seed1.a" 'j.choices[0].text')$(kv_jval "$T/seed1.b" 'j.choices[0].text')" \
	"$(kv_jval "$T/seed3.a" 'j.choices[0].text')$(kv_jval "$T/seed3.b" 'j.choices[0].text')"

kv_done
