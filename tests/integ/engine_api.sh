# engine_api.sh: kvgate-engine serve on 127.0.0.1 with the tiny DeepSeek-V2 fixture
# (tests/data/engine_tiny): endpoints, OpenAI stream shape, equality with `generate`, batching
# determinism, stop strings, prefix cache, cancel on disconnect, errors, routing state.
. "$(dirname "$0")/lib.sh"

KV_POST_MAX=20
kv_start_engine P
T=$KV_TMP

# ---- discovery ----
kv_eq "/health" 200 "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P/health")"
curl -s "http://127.0.0.1:$P/v1/models" >"$T/models"
kv_eq "/v1/models id" tiny "$(kv_jval "$T/models" 'j.data[0].id')"
kv_eq "/v1/models max_model_len" 256 "$(kv_jval "$T/models" 'j.data[0].max_model_len')"

# ---- equality with generate (greedy, and seeded sampling) ----
"$KV_ENGINE" generate "$KV_ENGINE_MODEL" --prompt "hello world, this is" --max-tokens 24 --ignore-eos --json --threads 1 >"$T/gen0"
"$KV_ENGINE" generate "$KV_ENGINE_MODEL" --prompt "hello world, this is" --max-tokens 24 --ignore-eos --json --threads 1 \
	--temperature 0.8 --seed 7 >"$T/gen1"
kv_post "$P" /v1/completions '{"prompt":"hello world, this is","max_tokens":24,"ignore_eos":true,"temperature":0}' "$T/c0" >/dev/null
kv_eq "greedy completion = generate" "$(kv_jval "$T/gen0" 'j.text')" "$(kv_jval "$T/c0" 'j.choices[0].text')"
kv_eq "finish_reason length" length "$(kv_jval "$T/c0" 'j.choices[0].finish_reason')"
np=$(kv_jval "$T/gen0" 'j.prompt_ids.length')
kv_eq "usage" "$np 24 $((np + 24))" "$(kv_jval "$T/c0" '[j.usage.prompt_tokens,j.usage.completion_tokens,j.usage.total_tokens].join(" ")')"
kv_post "$P" /v1/completions '{"prompt":"hello world, this is","max_tokens":24,"ignore_eos":true,"temperature":0.8,"seed":7}' "$T/c1" >/dev/null
kv_eq "seeded completion = generate --seed" "$(kv_jval "$T/gen1" 'j.text')" "$(kv_jval "$T/c1" 'j.choices[0].text')"
kv_post "$P" /v1/completions '{"prompt":"hello world, this is","max_tokens":24,"ignore_eos":true,"temperature":0.8,"seed":7,"stream":true}' "$T/s1" >/dev/null
kv_eq "streamed = non-streamed (seeded)" "$(kv_jval "$T/c1" 'j.choices[0].text')" "$(kv_sse "$T/s1" 's.content')"
kv_eq "completions stream ends with [DONE]" true "$(kv_sse "$T/s1" 's.done')"

# ---- chat stream shape (CLIENTS.md) ----
kv_post "$P" /v1/chat/completions '{"model":"tiny","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":null},{"role":"user","content":""}],"max_tokens":6,"stream":true,"stream_options":{"include_usage":true},"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"tool_choice":"auto","prompt_cache_key":"x","store":false,"user":"u"}' "$T/chs" >/dev/null
kv_eq "chat stream: role first" assistant "$(kv_sse "$T/chs" 's.role_first')"
kv_eq "chat stream: one id, one created" "true true" "$(kv_sse "$T/chs" '[s.same_id, s.same_created].join(" ")')"
kv_eq "chat stream: finish length" '["length"]' "$(kv_sse "$T/chs" 's.finish')"
kv_eq "chat stream: usage chunk" 6 "$(kv_sse "$T/chs" 's.usage && s.usage.completion_tokens')"
kv_eq "chat stream: usage null before" true "$(kv_sse "$T/chs" 's.usage_null_before')"
kv_eq "chat stream: [DONE] last" true "$(kv_sse "$T/chs" 's.done')"
kv_post "$P" /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":6,"temperature":0}' "$T/chn" >/dev/null
kv_eq "chat non-stream object" "chat.completion assistant" "$(kv_jval "$T/chn" 'j.object+" "+j.choices[0].message.role')"
kv_eq "chat: stream content = non-stream (greedy)" "$(kv_jval "$T/chn" 'j.choices[0].message.content')" \
	"$(kv_post "$P" /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"max_tokens":6,"temperature":0,"stream":true}' "$T/chs2" >/dev/null; kv_sse "$T/chs2" 's.content')"

# ---- stop strings (one that straddles tokens), stop_token_ids, many stops ----
full=$(kv_jval "$T/c0" 'j.choices[0].text')
stop=$(printf '%s' "$full" | node -e 'let s=require("fs").readFileSync(0,"utf8");let a=[...s];process.stdout.write(a.slice(4,7).join(""))')
body=$(node -e 'process.stdout.write(JSON.stringify({prompt:"hello world, this is",max_tokens:24,ignore_eos:true,temperature:0,stop:["zzzz1","zzzz2","zzzz3","zzzz4","zzzz5","zzzz6","zzzz7",process.argv[1]]}))' "$stop")
kv_post "$P" /v1/completions "$body" "$T/st" >/dev/null
want=$(printf '%s' "$full" | node -e 'let s=require("fs").readFileSync(0,"utf8");let a=[...s];let st=a.slice(4,7).join("");process.stdout.write(s.slice(0,s.indexOf(st)))')
kv_eq "stop string cuts the text" "$want" "$(kv_jval "$T/st" 'j.choices[0].text')"
kv_eq "stop string: finish stop" stop "$(kv_jval "$T/st" 'j.choices[0].finish_reason')"
body=$(node -e 'process.stdout.write(JSON.stringify({prompt:"hello world, this is",max_tokens:24,ignore_eos:true,temperature:0,stream:true,stop:[process.argv[1]]}))' "$stop")
kv_post "$P" /v1/completions "$body" "$T/sts" >/dev/null
kv_eq "stop string (stream)" "$want" "$(kv_sse "$T/sts" 's.content')"
tid=$(kv_jval "$T/gen0" 'j.ids[3]')
kv_post "$P" /v1/completions "{\"prompt\":\"hello world, this is\",\"max_tokens\":24,\"ignore_eos\":true,\"temperature\":0,\"stop_token_ids\":[$tid]}" "$T/sti" >/dev/null
kv_eq "stop_token_ids" "stop $(kv_jval "$T/gen0" 'j.ids.indexOf(j.ids[3])+1')" "$(kv_jval "$T/sti" 'j.choices[0].finish_reason+" "+j.usage.completion_tokens')"
# a stop string whose start matches the text's end holds that end back; the stop id then ends the
# sequence and the held text must still come (it was lost: Continue's "\n\n" cut FIM's last "\n")
for st in false true; do
	body=$(node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));const a=[...j.choices[0].text];
		process.stdout.write(JSON.stringify({prompt:"hello world, this is",max_tokens:24,ignore_eos:true,temperature:0,
		stream:process.argv[3]==="true",stop_token_ids:[+process.argv[2]],stop:[a[a.length-1]+"\u0001zz"]}))' "$T/sti" "$tid" $st)
	kv_post "$P" /v1/completions "$body" "$T/sth" >/dev/null
	got=$(if [ $st = true ]; then kv_sse "$T/sth" 's.content'; else kv_jval "$T/sth" 'j.choices[0].text'; fi)
	kv_eq "stop_token_ids + a stop string that never came (stream $st): nothing lost" "$(kv_jval "$T/sti" 'j.choices[0].text')" "$got"
done

# ---- 16 concurrent requests of mixed lengths = each alone ----
i=0
while [ $i -lt 16 ]; do
	n=$((4 + (i * 7) % 40))
	printf '{"prompt":"the quick brown fox %d jumps over the lazy dog %d","max_tokens":%d,"ignore_eos":true,"temperature":0.9,"seed":%d}' \
		$i $i $n $((i * 3)) >"$T/b$i"
	kv_post "$P" /v1/completions "$(cat "$T/b$i")" "$T/alone$i" >/dev/null
	i=$((i + 1))
done
i=0
pids=""
while [ $i -lt 16 ]; do
	kv_post "$P" /v1/completions "$(cat "$T/b$i")" "$T/conc$i" >/dev/null &
	pids="$pids $!"
	i=$((i + 1))
done
wait $pids
same=0
i=0
while [ $i -lt 16 ]; do
	[ "$(kv_jval "$T/alone$i" 'j.choices[0].text')" = "$(kv_jval "$T/conc$i" 'j.choices[0].text')" ] && same=$((same + 1))
	i=$((i + 1))
done
kv_eq "16 concurrent = alone" 16 "$same"
kv_post "$P" /v1/completions '{"prompt":"abc","max_tokens":8,"n":3,"temperature":1,"seed":5}' "$T/n3" >/dev/null
kv_eq "n=3: three choices" "0,1,2" "$(kv_jval "$T/n3" 'j.choices.map(c=>c.index).join(",")')"

# ---- prefix cache: a repeated long prompt hits and gives the same output ----
long='{"prompt":"def main(): return 0\nint main(void) { return 0; }\nthe quick brown fox jumps over the lazy dog. hello world, this is a test of the engine and the server.","max_tokens":12,"ignore_eos":true,"temperature":0}'
h0=$(kv_engine_metric "$P" 'vllm:prefix_cache_hits')
kv_post "$P" /v1/completions "$long" "$T/pc1" >/dev/null
kv_post "$P" /v1/completions "$long" "$T/pc2" >/dev/null
h1=$(kv_engine_metric "$P" 'vllm:prefix_cache_hits')
kv_ge "prefix cache hits grew" "$(( ${h1%.*} - ${h0%.*} ))" 16
kv_eq "prefix hit: same output" "$(kv_jval "$T/pc1" 'j.choices[0].text')" "$(kv_jval "$T/pc2" 'j.choices[0].text')"
kv_ge "usage.prompt_tokens_details.cached_tokens" "$(kv_jval "$T/pc2" 'j.usage.prompt_tokens_details.cached_tokens')" 16
curl -s "http://127.0.0.1:$P/kvgate/state?since=0" >"$T/state"
kv_ge "routing state: added hashes" "$(kv_jval "$T/state" 'j.added.length')" 3
kv_match "routing state: hash form" '^[0-9a-f]{16}$' "$(kv_jval "$T/state" 'j.added[0]')"
seq=$(kv_jval "$T/state" 'j.seq')
curl -s "http://127.0.0.1:$P/kvgate/state?since=$seq" >"$T/state2"
kv_eq "routing state since=seq: nothing new" "0 0 false" "$(kv_jval "$T/state2" '[j.added.length,j.evicted.length,j.reset].join(" ")')"

# ---- tokenize / detokenize ----
kv_post "$P" /tokenize '{"prompt":"hello world"}' "$T/tk" >/dev/null
kv_eq "/tokenize" "$(kv_jval "$T/gen0" 'JSON.stringify(j.prompt_ids.slice(0,0))' >/dev/null; kv_jval "$T/tk" 'j.count>0')" true
toks=$(kv_jval "$T/tk" 'JSON.stringify(j.tokens)')
kv_post "$P" /detokenize "{\"tokens\":$toks}" "$T/dtk" >/dev/null
kv_eq "/detokenize round trip" "hello world" "$(kv_jval "$T/dtk" 'j.prompt')"

# ---- responses API ----
kv_post "$P" /v1/responses '{"model":"tiny","instructions":"be brief","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}],"stream":true,"max_output_tokens":5,"tools":[]}' "$T/rs" >/dev/null
kv_eq "responses stream events" "response.created response.output_item.added response.output_text.delta response.output_item.done response.completed" \
	"$(node -e 'const t=require("fs").readFileSync(process.argv[1],"utf8");const ty=t.split("\n\n").filter(b=>b.includes("data: ")).map(b=>JSON.parse(b.split("data: ")[1]).type);const want=["response.created","response.output_item.added","response.output_text.delta","response.output_item.done","response.completed"];process.stdout.write(want.filter(w=>ty.includes(w)).join(" ")+(ty[ty.length-1]==="response.completed"||ty[ty.length-1]==="response.incomplete"?"":" (bad end)"))' "$T/rs")"
kv_post "$P" /v1/responses '{"input":"hi","max_output_tokens":4}' "$T/rn" >/dev/null
kv_eq "responses non-stream usage" 4 "$(kv_jval "$T/rn" 'j.usage.output_tokens')"

# ---- FIM alias ----
kv_eq "/v1/beta/completions with suffix" 200 "$(kv_post "$P" /v1/beta/completions '{"prompt":"def f(","suffix":"return 0","max_tokens":4}' "$T/fim")"

# ---- errors, and the server goes on ----
kv_eq "bad JSON: 400" 400 "$(kv_post "$P" /v1/completions '{bad' "$T/e1")"
kv_eq "bad JSON: OpenAI body" invalid_request_error "$(kv_jval "$T/e1" 'j.error.type')"
kv_eq "wrong type: 400 with param" "400 temperature" "$(kv_post "$P" /v1/completions '{"prompt":"a","temperature":"hot"}' "$T/e2") $(kv_jval "$T/e2" 'j.error.param')"
kv_eq "negative max_tokens: 400" "400 max_tokens" "$(kv_post "$P" /v1/chat/completions '{"messages":[],"max_tokens":-5}' "$T/e3") $(kv_jval "$T/e3" 'j.error.param')"
kv_eq "unknown model: 404" "404 model_not_found" "$(kv_post "$P" /v1/completions '{"prompt":"a","model":"gpt-9"}' "$T/e4") $(kv_jval "$T/e4" 'j.error.code')"
big=$(node -e 'process.stdout.write(JSON.stringify({prompt:Array(300).fill(7)}))')
kv_eq "prompt over max-model-len: 400" "400 context_length_exceeded" "$(kv_post "$P" /v1/completions "$big" "$T/e5") $(kv_jval "$T/e5" 'j.error.code')"
kv_match "context error names the limit" 'maximum context length is 256' "$(kv_jval "$T/e5" 'j.error.message')"
kv_eq "huge max_tokens clamped" "200 length 250" "$(kv_post "$P" /v1/completions '{"prompt":"hello world","max_tokens":32000,"ignore_eos":true}' "$T/e6") $(kv_jval "$T/e6" 'j.choices[0].finish_reason+" "+j.usage.completion_tokens')"
kv_eq "seed past 64 bits: 400" "400 seed" "$(kv_post "$P" /v1/completions '{"prompt":"a","seed":1e300}' "$T/e8") $(kv_jval "$T/e8" 'j.error.param')"
kv_eq "suffix of the wrong type: 400 names suffix" "400 suffix" "$(kv_post "$P" /v1/completions '{"prompt":"a","suffix":5}' "$T/e10") $(kv_jval "$T/e10" 'j.error.param')"
kv_eq "a non-integer prompt id: 400 says so" "400 prompt token id 1.5 is not an integer" "$(kv_post "$P" /v1/completions '{"prompt":[1.5]}' "$T/e11") $(kv_jval "$T/e11" 'j.error.message')"
# logit_bias: -100 on the greedy first token moves greedy off it (it was ignored)
t0=$(kv_jval "$T/gen0" 'j.ids[0]')
kv_post "$P" /v1/completions '{"prompt":"hello world, this is","max_tokens":1,"temperature":0}' "$T/lb0" >/dev/null
kv_post "$P" /v1/completions "{\"prompt\":\"hello world, this is\",\"max_tokens\":1,\"temperature\":0,\"logit_bias\":{\"$t0\":-100}}" "$T/lb1" >/dev/null
kv_eq "logit_bias -100 moves greedy off the token" true "$(node -e 'const f=require("fs"),t=x=>JSON.parse(f.readFileSync(x)).choices[0].text;process.stdout.write(String(t(process.argv[1])!==t(process.argv[2])))' "$T/lb0" "$T/lb1")"
kv_eq "logit_bias of the wrong type: 400" "400 logit_bias" "$(kv_post "$P" /v1/completions '{"prompt":"a","logit_bias":"x"}' "$T/e13") $(kv_jval "$T/e13" 'j.error.param')"
kv_eq "logit_bias key not a token: 400" "400 logit_bias" "$(kv_post "$P" /v1/completions '{"prompt":"a","logit_bias":{"99999999":1}}' "$T/e14") $(kv_jval "$T/e14" 'j.error.param')"
kv_eq "best_of < n: 400" "400 best_of" "$(kv_post "$P" /v1/completions '{"prompt":"a","n":3,"best_of":1}' "$T/e15") $(kv_jval "$T/e15" 'j.error.param')"
kv_eq "top_logprobs without logprobs: 400" "400 top_logprobs" "$(kv_post "$P" /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"top_logprobs":3}' "$T/e16") $(kv_jval "$T/e16" 'j.error.param')"
kv_eq "a non-integer stop token id: 400" "400 stop_token_ids" "$(kv_post "$P" /v1/completions '{"prompt":"a","stop_token_ids":[1.5]}' "$T/e17") $(kv_jval "$T/e17" 'j.error.param')"
# echo + logprobs: the stream's text_offset counts the echoed prompt as the non-streamed one does
kv_post "$P" /v1/completions '{"prompt":"hello world, this is","max_tokens":3,"temperature":0,"echo":true,"logprobs":0}' "$T/eo0" >/dev/null
kv_post "$P" /v1/completions '{"prompt":"hello world, this is","max_tokens":3,"temperature":0,"echo":true,"logprobs":0,"stream":true}' "$T/eo1" >/dev/null
kv_eq "echo: streamed text_offset = non-streamed" "$(kv_jval "$T/eo0" 'j.choices[0].logprobs.text_offset')" \
	"$(node -e 'const o=[];for(const l of require("fs").readFileSync(process.argv[1],"utf8").split("\n")){if(!l.startsWith("data: {"))continue;const c=JSON.parse(l.slice(6)).choices[0];if(c&&c.logprobs)o.push(...c.logprobs.text_offset)}process.stdout.write(JSON.stringify(o))' "$T/eo1")"
# metrics: an n = 3 request's prompt counts once
pt0=$(kv_engine_metric "$P" vllm:prompt_tokens_total)
kv_post "$P" /v1/completions '{"prompt":"hello world, this is","max_tokens":2,"n":3}' "$T/m3" >/dev/null
kv_eq "prompt_tokens_total: once for n = 3" "$(kv_jval "$T/m3" 'j.usage.prompt_tokens')" \
	"$(($(kv_engine_metric "$P" vllm:prompt_tokens_total | cut -d. -f1) - ${pt0%.*}))"
# a NUL in a string: refused (it used to cut the prompt short); an escaped backslash before u0000 is text
kv_eq "a NUL in the prompt: 400" 400 "$(kv_post "$P" /v1/completions '{"prompt":"a\u0000b","max_tokens":1}' "$T/e18")"
kv_eq "a backslash then u0000: served" 200 "$(kv_post "$P" /v1/completions '{"prompt":"a\\u0000b","max_tokens":1}' "$T/e19")"
# bodies of 16 KB or more are parsed on a worker thread: the same answers
node -e 'require("fs").writeFileSync(process.argv[1], JSON.stringify({prompt: "hello world, this is", max_tokens: 24,
  ignore_eos: true, temperature: 0, pad: "x".repeat(40000)}))' "$T/big1.json"
kv_post "$P" /v1/completions "@$T/big1.json" "$T/big1" >/dev/null
kv_eq "a 40 KB body (parsed on a worker): the same greedy text" "$(kv_jval "$T/c0" 'j.choices[0].text')" "$(kv_jval "$T/big1" 'j.choices[0].text')"
node -e 'let s="", x=7; while (s.length < 2e6) { x = (x * 1103515245 + 12345) % 2147483648; s += "w" + (x % 99991) + " "; }
  require("fs").writeFileSync(process.argv[1], JSON.stringify({prompt: s, max_tokens: 1}))' "$T/big2.json"
kv_eq "a 2 MB prompt: context_length_exceeded from the worker" "400 context_length_exceeded" \
	"$(kv_post "$P" /v1/completions "@$T/big2.json" "$T/big2") $(kv_jval "$T/big2" 'j.error.code')"
curl -s -o /dev/null --max-time 0.2 "http://127.0.0.1:$P/v1/completions" --data-binary "@$T/big2.json"
sleep 1
kv_eq "  a client gone during its parse: the engine serves on" 200 "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P/health")"
# a list of prompts: each one as if alone
kv_post "$P" /v1/completions '{"prompt":["hello world, this is","hello world, this is"],"max_tokens":24,"ignore_eos":true,"temperature":0}' "$T/lp" >/dev/null
kv_eq "a list of two prompts: each as alone" "$(kv_jval "$T/c0" 'j.choices[0].text')|$(kv_jval "$T/c0" 'j.choices[0].text')" "$(kv_jval "$T/lp" 'j.choices[0].text+"|"+j.choices[1].text')"
# messages is an unknown field on /v1/completions: ignored, the prompt is what runs
kv_post "$P" /v1/completions '{"prompt":"hello world, this is","max_tokens":24,"ignore_eos":true,"temperature":0,"messages":"junk"}' "$T/e12" >/dev/null
kv_eq "completions ignore a messages field" "$(kv_jval "$T/c0" 'j.choices[0].text')" "$(kv_jval "$T/e12" 'j.choices[0].text')"
kv_eq "max_tokens 1e300 clamped" "200 length" "$(kv_post "$P" /v1/completions '{"prompt":"hello world","max_tokens":1e300,"ignore_eos":true}' "$T/e9") $(kv_jval "$T/e9" 'j.choices[0].finish_reason')"
kv_eq "unknown route: 404" 404 "$(kv_post "$P" /v2/nothing '{}' "$T/e7")"
kv_eq "still serving" 200 "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P/health")"
kv_match "/metrics shows memory" 'kvgate_engine_memory_weights_bytes' "$(curl -s "http://127.0.0.1:$P/metrics" | grep memory)"

# ---- HTTP: HEAD has no body (the next answer on the connection must start clean), Expect ----
if kv_raw "$P" 'send:HEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' \
	'closed:3000' 'count:2:HTTP/1\.1 200' 'count:0:"object"'; then kv_ok "HEAD: headers only, keep-alive intact"
else kv_fail "HEAD: $(cat "$KV_TMP/raw.err") $(head -c 300 "$KV_TMP/raw.out")"; fi
if kv_raw "$P" 'send:POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 29\r\nExpect: 100-continue\r\n\r\n' \
	'expect:2000:^HTTP/1\.1 100 Continue\r\n\r\n$' 'send:{"prompt":"a","max_tokens":1}' 'expect:5000:HTTP/1\.1 200'; then
	kv_ok "Expect: 100-continue answered before the body"
else kv_fail "Expect: $(cat "$KV_TMP/raw.err") $(head -c 300 "$KV_TMP/raw.out")"; fi

# ---- response ids: random per start (two engines' first ids differ; they were equal) ----
kv_start_engine P2
kv_post "$P2" /v1/completions '{"prompt":"a","max_tokens":1}' "$T/id2" >/dev/null
STEP_MS=20 kv_start_engine P3
kv_post "$P3" /v1/completions '{"prompt":"a","max_tokens":1}' "$T/id3" >/dev/null
kv_eq "two engines' first ids differ" true "$(node -e 'const f=require("fs");const a=JSON.parse(f.readFileSync(process.argv[1])).id,b=JSON.parse(f.readFileSync(process.argv[2])).id;process.stdout.write(String(a!==b&&/^cmpl-/.test(a)))' "$T/id2" "$T/id3")"

# ---- generation_config.json: the model's request defaults (vLLM's --generation-config auto) ----
mkdir -p "$T/gc"
for f in "$KV_ROOT/$KV_ENGINE_MODEL"/*; do ln -sf "$f" "$T/gc/"; done
printf '{"temperature": 0, "max_new_tokens": 5, "do_sample": false}\n' >"$T/gc/generation_config.json"
KV_ENGINE_MODEL_SAVED=$KV_ENGINE_MODEL
KV_ENGINE_MODEL=$T/gc
kv_start_engine P4
kv_post "$P4" /v1/completions '{"prompt":"hello world, this is","ignore_eos":true}' "$T/g1" >/dev/null
kv_post "$P4" /v1/completions '{"prompt":"hello world, this is","ignore_eos":true}' "$T/g2" >/dev/null
kv_eq "generation_config: greedy by default, max_new_tokens as max_tokens" "5 true" \
	"$(kv_jval "$T/g1" 'j.usage.completion_tokens') $(node -e 'const f=require("fs"),t=x=>JSON.parse(f.readFileSync(x)).choices[0].text;process.stdout.write(String(t(process.argv[1])===t(process.argv[2])))' "$T/g1" "$T/g2")"
kv_post "$P4" /v1/completions '{"prompt":"hello world, this is","ignore_eos":true,"max_tokens":7}' "$T/g3" >/dev/null
kv_eq "  a request's own max_tokens wins" 7 "$(kv_jval "$T/g3" 'j.usage.completion_tokens')"
kv_file_has "  the start says so" "request defaults from .*generation_config.json: temperature 0, max_new_tokens 5" "$KV_TMP/engine-$P4.log"
printf '{"temperature": -1}\n' >"$T/gc/generation_config.json"
"$KV_ENGINE" serve "$T/gc" --port 1 >"$T/gcbad" 2>&1
kv_eq "a bad generation_config.json stops the start" 1 $?
kv_file_has "  naming the key" "temperature must be a number" "$T/gcbad"
KV_ENGINE_MODEL=$KV_ENGINE_MODEL_SAVED

# a stream the client drops counts as an abort (slow steps: it is still running when dropped)
ab() { curl -s "http://127.0.0.1:$P3/metrics" | sed -n 's/^vllm:request_success_total{finished_reason="abort",model_name="tiny"} \([0-9]*\).*/\1/p'; }
ab0=$(ab)
curl -sN --max-time 0.5 "http://127.0.0.1:$P3/v1/completions" -d '{"prompt":"a","max_tokens":200,"ignore_eos":true,"stream":true}' >/dev/null 2>&1
STEP_AB=$(( ${ab0:-0} + 1 ))
aborted() { [ "$(ab)" = "$STEP_AB" ]; }
kv_wait_for "abort counted" 3000 aborted && kv_ok "a dropped stream counts finished_reason=abort (model_name labelled)" ||
	kv_fail "abort not counted: $(curl -s "http://127.0.0.1:$P3/metrics" | grep request_success)"

kv_done
