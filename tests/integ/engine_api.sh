# engine_api.sh: kvgate-engine serve on 127.0.0.1 with the tiny DeepSeek-V2 fixture
# (tests/data/engine_tiny): endpoints, OpenAI stream shape, equality with `generate`, batching
# determinism, stop strings, prefix cache, cancel on disconnect, errors, routing state.
. "$(dirname "$0")/lib.sh"

ENGINE=$KV_BUILD/bin/kvgate-engine
MODEL=tests/data/engine_tiny
[ -x "$ENGINE" ] || kv_die "no $ENGINE"

# eng_start VAR [flags...]: start a server on a free port (port into VAR)
eng_start() {
	_v=$1
	shift
	kv_port _p
	kv_bg "engine-$_p" env KVGATE_ENGINE_STEP_DELAY_MS="${STEP_MS:-0}" "$ENGINE" serve "$MODEL" --host 127.0.0.1 \
		--port "$_p" --served-model-name tiny --threads 1 "$@"
	kv_wait_port "$_p" "$KV_BG_PID" 10000
	eval "$_v=$_p"
}
# post PORT PATH BODY OUT: prints the status
post() { curl -sS --max-time 20 -o "$4" -w '%{http_code}' -H 'content-type: application/json' \
	"http://127.0.0.1:$1$2" -d "$3" 2>"$4.err"; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | sed -n "s/^$2{[^}]*} \([0-9.e+-]*\)$/\1/p" | head -n 1; }
J() { node -e 'const fs=require("fs");const j=JSON.parse(fs.readFileSync(process.argv[1],"utf8"));const v=eval(process.argv[2]);process.stdout.write(typeof v==="string"?v:JSON.stringify(v))' "$1" "$2"; }

eng_start P
T=$KV_TMP

# ---- discovery ----
kv_eq "/health" 200 "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P/health")"
curl -s "http://127.0.0.1:$P/v1/models" >"$T/models"
kv_eq "/v1/models id" tiny "$(J "$T/models" 'j.data[0].id')"
kv_eq "/v1/models max_model_len" 256 "$(J "$T/models" 'j.data[0].max_model_len')"

# ---- equality with generate (greedy, and seeded sampling) ----
"$ENGINE" generate "$MODEL" --prompt "hello world, this is" --max-tokens 24 --ignore-eos --json --threads 1 >"$T/gen0"
"$ENGINE" generate "$MODEL" --prompt "hello world, this is" --max-tokens 24 --ignore-eos --json --threads 1 \
	--temperature 0.8 --seed 7 >"$T/gen1"
post "$P" /v1/completions '{"prompt":"hello world, this is","max_tokens":24,"ignore_eos":true,"temperature":0}' "$T/c0" >/dev/null
kv_eq "greedy completion = generate" "$(J "$T/gen0" 'j.text')" "$(J "$T/c0" 'j.choices[0].text')"
kv_eq "finish_reason length" length "$(J "$T/c0" 'j.choices[0].finish_reason')"
np=$(J "$T/gen0" 'j.prompt_ids.length')
kv_eq "usage" "$np 24 $((np + 24))" "$(J "$T/c0" '[j.usage.prompt_tokens,j.usage.completion_tokens,j.usage.total_tokens].join(" ")')"
post "$P" /v1/completions '{"prompt":"hello world, this is","max_tokens":24,"ignore_eos":true,"temperature":0.8,"seed":7}' "$T/c1" >/dev/null
kv_eq "seeded completion = generate --seed" "$(J "$T/gen1" 'j.text')" "$(J "$T/c1" 'j.choices[0].text')"
post "$P" /v1/completions '{"prompt":"hello world, this is","max_tokens":24,"ignore_eos":true,"temperature":0.8,"seed":7,"stream":true}' "$T/s1" >/dev/null
kv_eq "streamed = non-streamed (seeded)" "$(J "$T/c1" 'j.choices[0].text')" "$(kv_sse "$T/s1" 's.content')"
kv_eq "completions stream ends with [DONE]" true "$(kv_sse "$T/s1" 's.done')"

# ---- chat stream shape (CLIENTS.md) ----
post "$P" /v1/chat/completions '{"model":"tiny","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":null},{"role":"user","content":""}],"max_tokens":6,"stream":true,"stream_options":{"include_usage":true},"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"tool_choice":"auto","prompt_cache_key":"x","store":false,"user":"u"}' "$T/chs" >/dev/null
kv_eq "chat stream: role first" assistant "$(kv_sse "$T/chs" 's.role_first')"
kv_eq "chat stream: one id, one created" "true true" "$(kv_sse "$T/chs" '[s.same_id, s.same_created].join(" ")')"
kv_eq "chat stream: finish length" '["length"]' "$(kv_sse "$T/chs" 's.finish')"
kv_eq "chat stream: usage chunk" 6 "$(kv_sse "$T/chs" 's.usage && s.usage.completion_tokens')"
kv_eq "chat stream: usage null before" true "$(kv_sse "$T/chs" 's.usage_null_before')"
kv_eq "chat stream: [DONE] last" true "$(kv_sse "$T/chs" 's.done')"
post "$P" /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":6,"temperature":0}' "$T/chn" >/dev/null
kv_eq "chat non-stream object" "chat.completion assistant" "$(J "$T/chn" 'j.object+" "+j.choices[0].message.role')"
kv_eq "chat: stream content = non-stream (greedy)" "$(J "$T/chn" 'j.choices[0].message.content')" \
	"$(post "$P" /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"max_tokens":6,"temperature":0,"stream":true}' "$T/chs2" >/dev/null; kv_sse "$T/chs2" 's.content')"

# ---- stop strings (one that straddles tokens), stop_token_ids, many stops ----
full=$(J "$T/c0" 'j.choices[0].text')
stop=$(printf '%s' "$full" | node -e 'let s=require("fs").readFileSync(0,"utf8");let a=[...s];process.stdout.write(a.slice(4,7).join(""))')
body=$(node -e 'process.stdout.write(JSON.stringify({prompt:"hello world, this is",max_tokens:24,ignore_eos:true,temperature:0,stop:["zzzz1","zzzz2","zzzz3","zzzz4","zzzz5","zzzz6","zzzz7",process.argv[1]]}))' "$stop")
post "$P" /v1/completions "$body" "$T/st" >/dev/null
want=$(printf '%s' "$full" | node -e 'let s=require("fs").readFileSync(0,"utf8");let a=[...s];let st=a.slice(4,7).join("");process.stdout.write(s.slice(0,s.indexOf(st)))')
kv_eq "stop string cuts the text" "$want" "$(J "$T/st" 'j.choices[0].text')"
kv_eq "stop string: finish stop" stop "$(J "$T/st" 'j.choices[0].finish_reason')"
body=$(node -e 'process.stdout.write(JSON.stringify({prompt:"hello world, this is",max_tokens:24,ignore_eos:true,temperature:0,stream:true,stop:[process.argv[1]]}))' "$stop")
post "$P" /v1/completions "$body" "$T/sts" >/dev/null
kv_eq "stop string (stream)" "$want" "$(kv_sse "$T/sts" 's.content')"
tid=$(J "$T/gen0" 'j.ids[3]')
post "$P" /v1/completions "{\"prompt\":\"hello world, this is\",\"max_tokens\":24,\"ignore_eos\":true,\"temperature\":0,\"stop_token_ids\":[$tid]}" "$T/sti" >/dev/null
kv_eq "stop_token_ids" "stop $(J "$T/gen0" 'j.ids.indexOf(j.ids[3])+1')" "$(J "$T/sti" 'j.choices[0].finish_reason+" "+j.usage.completion_tokens')"

# ---- 16 concurrent requests of mixed lengths = each alone ----
i=0
while [ $i -lt 16 ]; do
	n=$((4 + (i * 7) % 40))
	printf '{"prompt":"the quick brown fox %d jumps over the lazy dog %d","max_tokens":%d,"ignore_eos":true,"temperature":0.9,"seed":%d}' \
		$i $i $n $((i * 3)) >"$T/b$i"
	post "$P" /v1/completions "$(cat "$T/b$i")" "$T/alone$i" >/dev/null
	i=$((i + 1))
done
i=0
pids=""
while [ $i -lt 16 ]; do
	post "$P" /v1/completions "$(cat "$T/b$i")" "$T/conc$i" >/dev/null &
	pids="$pids $!"
	i=$((i + 1))
done
wait $pids
same=0
i=0
while [ $i -lt 16 ]; do
	[ "$(J "$T/alone$i" 'j.choices[0].text')" = "$(J "$T/conc$i" 'j.choices[0].text')" ] && same=$((same + 1))
	i=$((i + 1))
done
kv_eq "16 concurrent = alone" 16 "$same"
post "$P" /v1/completions '{"prompt":"abc","max_tokens":8,"n":3,"temperature":1,"seed":5}' "$T/n3" >/dev/null
kv_eq "n=3: three choices" "0,1,2" "$(J "$T/n3" 'j.choices.map(c=>c.index).join(",")')"

# ---- prefix cache: a repeated long prompt hits and gives the same output ----
long='{"prompt":"def main(): return 0\nint main(void) { return 0; }\nthe quick brown fox jumps over the lazy dog. hello world, this is a test of the engine and the server.","max_tokens":12,"ignore_eos":true,"temperature":0}'
h0=$(metric "$P" 'vllm:prefix_cache_hits')
post "$P" /v1/completions "$long" "$T/pc1" >/dev/null
post "$P" /v1/completions "$long" "$T/pc2" >/dev/null
h1=$(metric "$P" 'vllm:prefix_cache_hits')
kv_ge "prefix cache hits grew" "$(( ${h1%.*} - ${h0%.*} ))" 16
kv_eq "prefix hit: same output" "$(J "$T/pc1" 'j.choices[0].text')" "$(J "$T/pc2" 'j.choices[0].text')"
kv_ge "usage.prompt_tokens_details.cached_tokens" "$(J "$T/pc2" 'j.usage.prompt_tokens_details.cached_tokens')" 16
curl -s "http://127.0.0.1:$P/kvgate/state?since=0" >"$T/state"
kv_ge "routing state: added hashes" "$(J "$T/state" 'j.added.length')" 3
kv_match "routing state: hash form" '^[0-9a-f]{16}$' "$(J "$T/state" 'j.added[0]')"
seq=$(J "$T/state" 'j.seq')
curl -s "http://127.0.0.1:$P/kvgate/state?since=$seq" >"$T/state2"
kv_eq "routing state since=seq: nothing new" "0 0 false" "$(J "$T/state2" '[j.added.length,j.evicted.length,j.reset].join(" ")')"

# ---- tokenize / detokenize ----
post "$P" /tokenize '{"prompt":"hello world"}' "$T/tk" >/dev/null
kv_eq "/tokenize" "$(J "$T/gen0" 'JSON.stringify(j.prompt_ids.slice(0,0))' >/dev/null; J "$T/tk" 'j.count>0')" true
toks=$(J "$T/tk" 'JSON.stringify(j.tokens)')
post "$P" /detokenize "{\"tokens\":$toks}" "$T/dtk" >/dev/null
kv_eq "/detokenize round trip" "hello world" "$(J "$T/dtk" 'j.prompt')"

# ---- responses API ----
post "$P" /v1/responses '{"model":"tiny","instructions":"be brief","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}],"stream":true,"max_output_tokens":5,"tools":[]}' "$T/rs" >/dev/null
kv_eq "responses stream events" "response.created response.output_item.added response.output_text.delta response.output_item.done response.completed" \
	"$(node -e 'const t=require("fs").readFileSync(process.argv[1],"utf8");const ty=t.split("\n\n").filter(b=>b.includes("data: ")).map(b=>JSON.parse(b.split("data: ")[1]).type);const want=["response.created","response.output_item.added","response.output_text.delta","response.output_item.done","response.completed"];process.stdout.write(want.filter(w=>ty.includes(w)).join(" ")+(ty[ty.length-1]==="response.completed"||ty[ty.length-1]==="response.incomplete"?"":" (bad end)"))' "$T/rs")"
post "$P" /v1/responses '{"input":"hi","max_output_tokens":4}' "$T/rn" >/dev/null
kv_eq "responses non-stream usage" 4 "$(J "$T/rn" 'j.usage.output_tokens')"

# ---- FIM alias ----
kv_eq "/v1/beta/completions with suffix" 200 "$(post "$P" /v1/beta/completions '{"prompt":"def f(","suffix":"return 0","max_tokens":4}' "$T/fim")"

# ---- errors, and the server goes on ----
kv_eq "bad JSON: 400" 400 "$(post "$P" /v1/completions '{bad' "$T/e1")"
kv_eq "bad JSON: OpenAI body" invalid_request_error "$(J "$T/e1" 'j.error.type')"
kv_eq "wrong type: 400 with param" "400 temperature" "$(post "$P" /v1/completions '{"prompt":"a","temperature":"hot"}' "$T/e2") $(J "$T/e2" 'j.error.param')"
kv_eq "negative max_tokens: 400" "400 max_tokens" "$(post "$P" /v1/chat/completions '{"messages":[],"max_tokens":-5}' "$T/e3") $(J "$T/e3" 'j.error.param')"
kv_eq "unknown model: 404" "404 model_not_found" "$(post "$P" /v1/completions '{"prompt":"a","model":"gpt-9"}' "$T/e4") $(J "$T/e4" 'j.error.code')"
big=$(node -e 'process.stdout.write(JSON.stringify({prompt:Array(300).fill(7)}))')
kv_eq "prompt over max-model-len: 400" "400 context_length_exceeded" "$(post "$P" /v1/completions "$big" "$T/e5") $(J "$T/e5" 'j.error.code')"
kv_match "context error names the limit" 'maximum context length is 256' "$(J "$T/e5" 'j.error.message')"
kv_eq "huge max_tokens clamped" "200 length 250" "$(post "$P" /v1/completions '{"prompt":"hello world","max_tokens":32000,"ignore_eos":true}' "$T/e6") $(J "$T/e6" 'j.choices[0].finish_reason+" "+j.usage.completion_tokens')"
kv_eq "unknown route: 404" 404 "$(post "$P" /v2/nothing '{}' "$T/e7")"
kv_eq "still serving" 200 "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P/health")"
kv_match "/metrics shows memory" 'kvgate_engine_memory_weights_bytes' "$(curl -s "http://127.0.0.1:$P/metrics" | grep memory)"

kv_done
