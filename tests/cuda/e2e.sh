#!/bin/sh
# e2e.sh: end-to-end checks on the GPU machine, from the repository root, after tests/cuda/build.sh
# (or the commands in bench/NOTES-cuda.md, "End to end on the H200") put kvgate-engine,
# fullshape_logits and the libraries the GPU machine lacks into build/cuda-carry here:
#   serve      kvgate-engine serve models/kvgate-tiny-coder --device cuda (port 8001) beside --device cpu
#              (port 8002): a greedy /v1/completions and a streamed /v1/chat/completions on both,
#              texts compared; nvidia-smi against --gpu-memory-utilization 0.9 (default) and 0.5;
#              /metrics memory lines; the engine's start line (weights, KV sizes)
#   samples    generate --json, --device cuda (KV auto = bf16, and f32) against --device cpu, token for
#              token, on models/kvgate-tiny-coder/eval/samples.json (and against transformers' ids there);
#              a sample may differ only where transformers' top-2 margin is under 0.01 (a near tie)
#   fullshape  tools/fullshape_check.py: 2 layers (with the CPU engine too), then the real 27 layers
# Logs: $LOG (default $OUT, else /tmp/e2e). Exit status: non-zero if a check failed.
#   sh tests/cuda/e2e.sh [serve samples fullshape]
D=${D:-build/cuda-carry}
LOG=${LOG:-${OUT:-/tmp/e2e}}
mkdir -p "$LOG"
W=/tmp/e2e-work
mkdir -p $W
M=models/kvgate-tiny-coder
E=$D/kvgate-engine
CUBLAS_DIR=$(dirname "$(ls /usr/local/cuda/lib64/libcublas.so.13 /usr/local/cuda*/lib*/libcublas.so.13 \
	$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__file__))' 2>/dev/null)/cu13/lib/libcublas.so.13 \
	2>/dev/null | head -1)" 2>/dev/null)
# the engine's libraries for its processes only (curl and python3 keep the machine's own)
ENGINE_LD_LIBRARY_PATH="$PWD/$D/lib:$CUBLAS_DIR:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export ENGINE_LD_LIBRARY_PATH
eng() { LD_LIBRARY_PATH=$ENGINE_LD_LIBRARY_PATH "$@"; }
# (servers start without eng(): a function run in the background is a subshell, and $! would be its
# pid, not the server's, so kill would leave the server holding its GPU memory)
export FULLSHAPE_ENGINE=$D/fullshape_logits
# E2E_CUDA_DEVICE=cpu: a dry run of the script on a machine without a GPU (every "cuda" run on the CPU)
CU=${E2E_CUDA_DEVICE:-cuda}
what=${*:-serve samples fullshape}
rc=0
T0=$(date +%s)
el() { echo "[e2e +$(($(date +%s) - T0))s] $*"; }

# HTTP without curl if the machine has none: post URL JSON | get URL
if command -v curl >/dev/null; then
	post() { curl -sS -N -m 120 -H 'Content-Type: application/json' -d "$2" "$1"; }
	get() { curl -sS -m 10 "$1"; }
else
	post() { python3 -c 'import sys,urllib.request as u; r=u.urlopen(u.Request(sys.argv[1],sys.argv[2].encode(),{"Content-Type":"application/json"}),timeout=120)
for l in r: sys.stdout.write(l.decode())' "$1" "$2"; }
	get() { python3 -c 'import sys,urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1],timeout=10).read().decode())' "$1"; }
fi
wait_up() { # port pid: until /health answers (90 s)
	i=0
	while [ $i -lt 180 ]; do
		get "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.5
		i=$((i + 1))
	done
	return 1
}
smi() { nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader; nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$LOG/gpu.txt"
el "idle GPU memory: $(smi | tr '\n' ' ')"

for w in $what; do
	case $w in
	serve)
		S=$LOG/serve.txt
		: >"$S"
		el "serve: cuda on 8001, cpu on 8002"
		LD_LIBRARY_PATH=$ENGINE_LD_LIBRARY_PATH $E serve $M --device $CU --port 8001 >$W/serve-cuda.log 2>&1 &
		PC=$!
		LD_LIBRARY_PATH=$ENGINE_LD_LIBRARY_PATH $E serve $M --device cpu --port 8002 >$W/serve-cpu.log 2>&1 &
		PP=$!
		if ! wait_up 8001 $PC || ! wait_up 8002 $PP; then
			echo "== serve: a server did not come up" | tee -a "$S"
			rc=1
		fi
		el "servers up"
		{
			echo "## nvidia-smi with the CUDA server up (--gpu-memory-utilization 0.9, the default)"
			smi
			echo "## /v1/models (8001)"; get http://127.0.0.1:8001/v1/models; echo
		} >>"$S" 2>&1
		NAME=$(get http://127.0.0.1:8001/v1/models | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
		CMP="{\"model\":\"$NAME\",\"prompt\":\"def fibonacci(n):\\n\",\"max_tokens\":32,\"temperature\":0}"
		CHAT="{\"model\":\"$NAME\",\"messages\":[{\"role\":\"user\",\"content\":\"Write a Python function that reverses a string.\"}],\"max_tokens\":32,\"temperature\":0,\"stream\":true}"
		for p in 8001 8002; do
			post http://127.0.0.1:$p/v1/completions "$CMP" >$W/cmp-$p.json 2>&1
			post http://127.0.0.1:$p/v1/chat/completions "$CHAT" >$W/chat-$p.sse 2>&1
		done
		{
			echo "## requests"; echo "$CMP"; echo "$CHAT"
			for p in 8001 8002; do
				echo "## /v1/completions on $p"; cat $W/cmp-$p.json; echo
				echo "## streamed /v1/chat/completions on $p (first 6 and last 3 events)"
				head -12 $W/chat-$p.sse; echo ...; tail -6 $W/chat-$p.sse
			done
			echo "## /metrics on 8001: memory, cache config"
			get http://127.0.0.1:8001/metrics | grep -i -E 'memory|cache_config|gpu' | grep -v '^# HELP'
			echo "## generate --device cpu / cuda on the same prompt (BOS added as the server does? compare)"
			eng $E generate $M --prompt "def fibonacci(n):
" --max-tokens 32 --json --device cpu
			eng $E generate $M --prompt "def fibonacci(n):
" --max-tokens 32 --json --device $CU
		} >>"$S" 2>&1
		python3 - "$W" >>"$S" 2>&1 <<'EOF' || rc=1
import json, sys
w = sys.argv[1]
t = {p: json.load(open(f"{w}/cmp-{p}.json"))["choices"][0]["text"] for p in (8001, 8002)}
def sse(path):
    out, n, done = [], 0, False
    for l in open(path):
        l = l.strip()
        if l == "data: [DONE]":
            done = True
        elif l.startswith("data: "):
            n += 1
            for c in json.loads(l[6:]).get("choices", []):
                out.append((c.get("delta") or {}).get("content") or "")
    return "".join(out), n, done
c = {p: sse(f"{w}/chat-{p}.sse") for p in (8001, 8002)}
print("## comparison")
print("completions cuda:", repr(t[8001]))
print("completions cpu :", repr(t[8002]))
print("completions equal:", t[8001] == t[8002])
for p in (8001, 8002):
    print(f"chat stream {p}: {c[p][1]} events, [DONE] {c[p][2]}: {c[p][0]!r}")
print("chat equal:", c[8001][0] == c[8002][0])
sys.exit(0 if t[8001] and c[8001][2] and c[8001][0] else 1)
EOF
		kill $PC $PP
		wait $PC $PP 2>/dev/null
		el "servers stopped: $(smi | tr '\n' ' ')"
		el "utilisation 0.5"
		LD_LIBRARY_PATH=$ENGINE_LD_LIBRARY_PATH $E serve $M --device $CU --port 8003 --gpu-memory-utilization 0.5 >$W/serve-cuda-05.log 2>&1 &
		PC=$!
		if wait_up 8003 $PC; then
			{ echo "## nvidia-smi with the CUDA server up, --gpu-memory-utilization 0.5"; smi
			  get http://127.0.0.1:8003/metrics | grep -E 'kvgate_engine_memory|cache_config' | grep -v '^#'; } >>"$S" 2>&1
		else
			echo "== serve 0.5 did not come up" >>"$S"
			rc=1
		fi
		kill $PC
		wait $PC 2>/dev/null
		for f in serve-cuda serve-cpu serve-cuda-05; do echo "## $f.log"; tail -20 $W/$f.log; done >>"$S"
		cat "$S"
		;;
	samples)
		el "samples: generate cuda (auto, f32) vs cpu"
		python3 - "$E" "$M" "$LOG/samples.json" "$CU" <<'EOF' || rc=1
import json, os, subprocess, sys
E, M, out, CU = sys.argv[1:5]
env = dict(os.environ, LD_LIBRARY_PATH=os.environ["ENGINE_LD_LIBRARY_PATH"])
S = json.load(open(f"{M}/eval/samples.json"))["samples"]
def gen(s, dev, kv):
    cmd = [E, "generate", M, "--prompt-ids", ",".join(map(str, s["prompt_ids"])), "--max-tokens",
           str(len(s["greedy_ids"])), "--json", "--device", CU if dev == "cuda" else dev, "--kv-cache-dtype", kv]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if p.returncode:
        return {"error": p.stderr[-500:]}
    return json.loads(p.stdout.strip().splitlines()[-1])
def agree(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
rows, ok = [], True
for i, s in enumerate(S):
    r = {"i": i, "kind": s["kind"], "n": len(s["greedy_ids"]), "min_margin_hf": s["min_margin"]}
    cpu = gen(s, "cpu", "auto")
    for dev, kv in (("cuda", "auto"), ("cuda", "f32")):
        g = gen(s, dev, kv)
        if "error" in g or "error" in cpu:
            r[f"{dev}_{kv}"] = g.get("error") or cpu.get("error")
            ok = False
            continue
        r[f"{dev}_{kv}_eq_cpu"] = agree(g["ids"], cpu["ids"])
        r[f"{dev}_{kv}_eq_hf"] = agree(g["ids"], s["greedy_ids"])
        r[f"{dev}_{kv}_tok_s"] = round(g["tokens_per_s"], 1)
        # fast mode rounds the GEMMs' activations to bf16 (any KV format): a sample may diverge
        # from the CPU only where transformers' own top-2 margin comes within 0.01 logits (a tie)
        ok &= g["ids"] == cpu["ids"] or s["min_margin"] < 0.01
    if "ids" in cpu:
        r["cpu_eq_hf"] = agree(cpu["ids"], s["greedy_ids"])
        r["cpu_tok_s"] = round(cpu["tokens_per_s"], 1)
    rows.append(r)
    print(r, flush=True)
tot = {k: sum(r.get(k, 0) for r in rows) for k in ("n", "cuda_auto_eq_cpu", "cuda_f32_eq_cpu", "cuda_auto_eq_hf",
                                                   "cuda_f32_eq_hf", "cpu_eq_hf")}
print("totals (tokens equal before the first divergence, of n):", tot)
json.dump({"rows": rows, "totals": tot}, open(out, "w"), indent=1)
sys.exit(0 if ok else 1)
EOF
		;;
	fullshape)
		s=0
		if [ "${FULLSHAPE_SMOKE:-1}" = 1 ]; then # FULLSHAPE_SMOKE=0: straight to 27 layers
			el "fullshape: 2 layers (+ CPU engine)"
			PYTHONUNBUFFERED=1 python3 tools/fullshape_check.py --layers 2 --cpu --report "$LOG/fullshape-L2.json"
			s=$?
			[ $s -ne 0 ] && rc=$s && echo "== fullshape L2: exit $s"
		fi
		if [ $s -lt 2 ]; then
			el "fullshape: 27 layers"
			PYTHONUNBUFFERED=1 timeout ${FULL_TIMEOUT:-330} python3 tools/fullshape_check.py --layers 27 \
				--report "$LOG/fullshape-L27.json"
			s=$?
			[ $s -ne 0 ] && rc=$s && echo "== fullshape L27: exit $s"
		fi
		;;
	esac
done
el "done, rc $rc"
exit $rc
