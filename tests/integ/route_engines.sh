#!/bin/sh
# route_engines.sh: kvgate routing in front of real kvgate-engine processes (issue 7's "done when"):
# a short pool (one engine, --max-model-len 96) and a long pool (two engines, 256) on the tiny test
# model; each pool's context length is learned from the engines' /v1/models. Routing by length, the
# exact count in context_length_exceeded (the engines' own /tokenize agrees), a multi-turn
# conversation that stays on one instance and hits that engine's prefix cache, and that moves when
# its instance is loaded.
. "$(dirname "$0")/lib.sh"

ENGINE=$KV_BUILD/bin/kvgate-engine
MODEL=tests/data/engine_tiny
[ -x "$ENGINE" ] && [ -x "$KVGATE" ] || kv_die "build first"
T=$KV_TMP
eng() {  # eng VAR MAXLEN: an engine on a free port
	kv_port _p
	kv_bg "engine-$_p" env KVGATE_ENGINE_STEP_DELAY_MS="${STEP_MS:-0}" "$ENGINE" serve "$MODEL" \
		--host 127.0.0.1 --port "$_p" --served-model-name tiny --threads 1 --max-model-len "$2" \
		--max-num-seqs 4 --kv-cache-memory 8M
	kv_wait_port "$_p" "$KV_BG_PID" 10000
	eval "$1=$_p; $1_PID=$KV_BG_PID"
}
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" 'index($1, n) == 1 && $1 !~ /^#/ { s += $2 } END { printf "%d\n", s }'; }
STEP_MS=15 eng S 96
STEP_MS=15 eng L1 256
STEP_MS=15 eng L2 256
kv_port P
U=http://127.0.0.1:$P
R=$T/r
cat >"$T/kvgate.conf" <<CONF
{ "listen": "", "listen_plain": "127.0.0.1:$P", "access_log": "$T/access.log",
  "health_interval_ms": 300, "route_balance_abs": 2,
  "pools": [
    {"name": "short", "upstreams": ["127.0.0.1:$S"], "model": "tiny", "tokenizer": "$MODEL"},
    {"name": "long", "upstreams": ["127.0.0.1:$L1", "127.0.0.1:$L2"], "model": "tiny", "tokenizer": "$MODEL"}
  ] }
CONF
kv_start_kvgate "$T/kvgate.conf" "$P"
learned() { [ "$(grep -c 'max_model_len 256' "$KVGATE_LOG")" -ge 2 ] && grep -q 'max_model_len 96' "$KVGATE_LOG"; }
kv_wait_for "max_model_len learned from the engines" 5000 learned || kv_fail "kvgate did not learn the engines' context lengths"
last_up() { tail -n 1 "$T/access.log" | sed -n 's/.* upstream=127.0.0.1:\([0-9]*\) .*/\1/p'; }
chat() {  # chat FILE TEXT [MAX_TOKENS]
	node -e 'const [f, t, m] = process.argv.slice(1); const b = {model: "tiny", messages: [{role: "user", content: t}]};
	  if (m) b.max_tokens = +m; require("fs").writeFileSync(f, JSON.stringify(b));' "$1" "$2" "${3:-}"
}
post() { kv_curl "$R" "$U/v1/chat/completions" --data-binary @"$1"; }

# ---- by length ----
chat "$T/short.json" "def f(): return 1" 8
kv_eq "short prompt + 8 -> 200" 200 "$(post "$T/short.json")"
kv_eq "  served by the short pool's engine" "$S" "$(last_up)"
chat "$T/long.json" "$(printf 'x = [1, 2, 3]  # list %.0s' 1 2 3 4)" 8
kv_eq "a longer prompt -> 200" 200 "$(post "$T/long.json")"
kv_match "  served by a long pool engine" "^($L1|$L2)\$" "$(last_up)"
printf '{"model":"tiny","messages":[{"role":"user","content":"def f(): return 1"}],"max_tokens":32000,"ignore_eos":true}' >"$T/greedy.json"
kv_eq "max_tokens 32000 -> 200" 200 "$(post "$T/greedy.json")"
kv_eq "  finish_reason length (clamped to the room left)" length "$(kv_json "$R" 'j.choices[0].finish_reason')"
n=$(kv_json "$R" 'j.usage.prompt_tokens')
kv_eq "  prompt + completion = the long pool's 256" 256 "$((n + $(kv_json "$R" 'j.usage.completion_tokens')))"

# ---- too long for every pool: kvgate's count equals the engine's ----
chat "$T/huge.json" "$(printf 'word %.0s' $(seq 1 150))" 8
kv_eq "a prompt over 256 -> 400" 400 "$(post "$T/huge.json")"
kv_match "  context_length_exceeded" '"code":"context_length_exceeded"' "$(cat "$R")"
node -e 'const b = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  require("fs").writeFileSync(process.argv[2], JSON.stringify({model: "tiny", messages: b.messages}));' \
	"$T/huge.json" "$T/tok.json"
curl -s "http://127.0.0.1:$L1/tokenize" --data-binary @"$T/tok.json" >"$T/tok.out"
kv_match "  kvgate's count is the engine's ($(kv_json "$T/tok.out" 'j.count'))" \
	"\\($(kv_json "$T/tok.out" 'j.count') in the messages" "$(cat "$R")"

# ---- a conversation stays on one instance and hits its prefix cache ----
# (its first turn is already over the short pool's 96 tokens: every turn goes to the long pool)
conv() {  # conv FILE TURNS
	node -e 'const [f, t] = process.argv.slice(1); const m = [{role: "system", content: "You fix code. Keep answers short, name the line, and never rewrite the whole file."}];
	  for (let i = 0; i < +t; i++) { m.push({role: "user", content: "fix bug " + i + " in loop"});
	  if (i + 1 < +t) m.push({role: "assistant", content: "done " + i}); }
	  require("fs").writeFileSync(f, JSON.stringify({model: "tiny", messages: m, max_tokens: 4}));' "$1" "$2"
}
h0=$(( $(metric "$L1" vllm:prefix_cache_hits) + $(metric "$L2" vllm:prefix_cache_hits) ))
first="" same=1
for t in 1 2 3 4; do
	conv "$T/conv.json" $t
	post "$T/conv.json" >/dev/null
	[ -z "$first" ] && first=$(last_up)
	[ "$(last_up)" = "$first" ] || same=0
done
kv_eq "4 turns on one instance (:$first)" 1 "$same"
other=$L1
[ "$first" = "$L1" ] && other=$L2
kv_ge "  that engine's prefix cache hit (tokens)" "$(metric "$first" vllm:prefix_cache_hits)" 16
kv_eq "  the other engine's did not" 0 "$(metric "$other" vllm:prefix_cache_hits)"

# ---- under load it moves: three slow requests on its instance, none on the other ----
conv "$T/conv4.json" 4
node -e 'const f = process.argv[1]; const b = JSON.parse(require("fs").readFileSync(f, "utf8"));
  b.max_tokens = 120; b.ignore_eos = true; require("fs").writeFileSync(f + ".slow", JSON.stringify(b));' "$T/conv4.json"
for i in 1 2 3; do
	curl -s --max-time 30 "$U/v1/chat/completions" --data-binary @"$T/conv4.json.slow" -o /dev/null &
	KV_PIDS="$KV_PIDS $!"
	sleep 0.2
done
conv "$T/conv5.json" 5
kv_eq "turn 5 while :$first has 3 in flight -> 200" 200 "$(post "$T/conv5.json")"
kv_eq "  on the other instance" "$other" "$(last_up)"

kv_done
