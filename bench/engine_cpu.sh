#!/bin/sh
# engine_cpu.sh [BUILD [MODEL_DIR]]: kvgate-engine on the CPU backend, tokens/s at concurrency 1, 4
# and 8 (`make bench-engine-cpu` runs it as `sh bench/engine_cpu.sh build`). A figure to watch,
# not a goal. The server runs with its defaults (all CPUs, prefix caching on); each of C clients
# sends BENCH_REQS requests in a row (distinct prompts, so no prefix hits; max_tokens BENCH_TOKENS,
# ignore_eos, temperature 0.7 with a seed). Printed per concurrency: requests, generated tokens,
# wall time, generated tokens/s (all clients together) and per client, and the mean TTFT from
# vllm:time_to_first_token_seconds. Default model: tests/data/engine_tiny (DeepSeek-V2 shape, 0.5 MB);
# models/ when a trained model with a tokenizer is there.
set -u
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
MODEL=${2:-}
if [ -z "$MODEL" ]; then
	MODEL=tests/data/engine_tiny
	for d in models/*/; do
		[ -f "$d/tokenizer.json" ] && [ -f "$d/config.json" ] && MODEL=${d%/} && break
	done
fi
ENGINE=$BUILD/bin/kvgate-engine
[ -x "$ENGINE" ] || { echo "no $ENGINE: make first" >&2; exit 1; }
REQS=${BENCH_REQS:-8}
TOK=${BENCH_TOKENS:-64}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvbench-engine.XXXXXX") || exit 1
PORT=$((20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 30000))
"$ENGINE" serve "$MODEL" --host 127.0.0.1 --port "$PORT" --served-model-name bench >"$TMP/engine.log" 2>&1 &
EPID=$!
trap 'kill $EPID 2>/dev/null; wait $EPID 2>/dev/null; rm -rf "$TMP"' EXIT INT TERM
i=0
until curl -s -o /dev/null "http://127.0.0.1:$PORT/health"; do
	i=$((i + 1))
	[ $i -lt 300 ] || { echo "the engine did not start:"; cat "$TMP/engine.log"; exit 1; }
	sleep 0.1
done
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | sed -n "s/^$1{[^}]*} \([0-9.e+-]*\)$/\1/p" | head -n 1; }
ms() { date +%s%3N; }

echo "kvgate-engine CPU benchmark: $MODEL, $(nproc) CPUs, $REQS requests per client, $TOK tokens each"
head -n 1 "$TMP/engine.log" | sed 's/^kvgate-engine: /  /'
printf '%-12s %9s %10s %9s %12s %16s %10s\n' concurrency requests gen_tokens wall_s tokens/s tokens/s/client ttft_ms
for C in 1 4 8; do
	g0=$(metric vllm:generation_tokens_total); ts0=$(metric vllm:time_to_first_token_seconds_sum)
	tc0=$(metric vllm:time_to_first_token_seconds_count)
	t0=$(ms)
	c=0
	pids=""
	while [ $c -lt "$C" ]; do
		( r=0; while [ $r -lt "$REQS" ]; do
			curl -s -o /dev/null "http://127.0.0.1:$PORT/v1/completions" -d \
				"{\"prompt\":\"client $C.$c request $r: def main():\",\"max_tokens\":$TOK,\"ignore_eos\":true,\"temperature\":0.7,\"seed\":$r}"
			r=$((r + 1))
		done ) &
		pids="$pids $!"
		c=$((c + 1))
	done
	wait $pids
	t1=$(ms)
	g1=$(metric vllm:generation_tokens_total); ts1=$(metric vllm:time_to_first_token_seconds_sum)
	tc1=$(metric vllm:time_to_first_token_seconds_count)
	awk -v c="$C" -v n=$((C * REQS)) -v g0="$g0" -v g1="$g1" -v t="$((t1 - t0))" -v s0="$ts0" -v s1="$ts1" \
		-v k0="$tc0" -v k1="$tc1" 'BEGIN { g = g1 - g0; w = t / 1000; k = k1 - k0;
		printf "%-12d %9d %10d %9.2f %12.1f %16.1f %10.1f\n", c, n, g, w, g / w, g / w / c, k ? (s1 - s0) / k * 1000 : 0 }'
done
