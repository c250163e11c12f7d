#!/bin/sh
# routing.sh BUILD: `make bench-routing`. Cache-aware routing against round-robin, in one run: two
# kvgate-engine instances (CPU, the bundled model) in one pool behind kvgate; a multi-turn coding
# workload (bench/routing.mjs); for each policy, fresh engines (empty caches), then the engines'
# own prefix-cache hit rate (vllm:prefix_cache_hits / vllm:prefix_cache_queries, in tokens) and the
# clients' time to first token. Policies alternate (A B A B ...); medians over REPS repetitions.
# Environment: REPS (2), SESSIONS (6), TURNS (5), BAL (kvgate's route_balance_abs, default its own).
set -u
B=${1:-build}
REPS=${REPS:-2}
SESSIONS=${SESSIONS:-6}
TURNS=${TURNS:-5}
MODEL=models/kvgate-tiny-coder
NAME=kvgate-tiny-coder
T=$(mktemp -d /tmp/kvgate-bench-routing.XXXXXX)
PIDS=""
trap 'kill $PIDS 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT INT TERM
KEY=bench-key
P1=18101 P2=18102 PG=18180

metric() {  # metric PORT NAME: a counter's value
	curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d\n", s }'
}
wait_port() {
	i=0
	until curl -s -o /dev/null "http://127.0.0.1:$1/health"; do
		i=$((i + 1)); [ $i -gt 300 ] && { echo "routing.sh: port $1 did not come up" >&2; exit 1; }
		sleep 0.1
	done
}

BALKEY=""
[ -n "${BAL:-}" ] && BALKEY="\"route_balance_abs\": $BAL,"
run() {  # run POLICY: prints "hits queries ttft-json"
	policy=$1
	PIDS=""
	for p in $P1 $P2; do
		"$B/bin/kvgate-engine" serve "$MODEL" --served-model-name "$NAME" --host 127.0.0.1 --port $p \
			--max-model-len 4096 --max-num-seqs 8 --kv-cache-memory 64M --threads 1 >"$T/engine-$p.log" 2>&1 &
		PIDS="$PIDS $!"
	done
	cat >"$T/kvgate.conf" <<CONF
{ "listen": "", "listen_plain": "127.0.0.1:$PG", "access_log": "",
  "route_policy": "$policy", $BALKEY
  "users": [{"name": "bench", "key_sha256": "$("$B/bin/kvgate" hash-key "$KEY")", "max_concurrent": 64}],
  "pools": [{"name": "default", "upstreams": ["127.0.0.1:$P1", "127.0.0.1:$P2"], "model": "$NAME",
             "tokenizer": "$MODEL"}] }
CONF
	"$B/bin/kvgate" -c "$T/kvgate.conf" >"$T/kvgate.log" 2>&1 &
	PIDS="$PIDS $!"
	wait_port $P1; wait_port $P2; wait_port $PG
	out=$(node bench/routing.mjs "http://127.0.0.1:$PG" "$KEY" "$SESSIONS" "$TURNS" "$NAME")
	h=$(( $(metric $P1 vllm:prefix_cache_hits) + $(metric $P2 vllm:prefix_cache_hits) ))
	q=$(( $(metric $P1 vllm:prefix_cache_queries) + $(metric $P2 vllm:prefix_cache_queries) ))
	kill $PIDS 2>/dev/null
	wait 2>/dev/null
	PIDS=""
	echo "$policy $h $q $out" >>"$T/results"
}

echo "bench-routing: $SESSIONS sessions x $TURNS turns, 2 CPU engines (1 thread each), $REPS repetitions per policy${BAL:+, route_balance_abs $BAL}"
r=0
while [ $r -lt "$REPS" ]; do
	run cache_aware
	run round_robin
	r=$((r + 1))
done
node -e '
const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n");
const by = {};
for (const l of lines) {
  const [p, h, q, ...rest] = l.split(" ");
  const j = JSON.parse(rest.join(" "));
  (by[p] ??= []).push({ hit: +q ? +h / +q : 0, mean: j.ttft_ms.reduce((a, b) => a + b, 0) / j.ttft_ms.length,
    p50: j.ttft_ms.sort((a, b) => a - b)[Math.floor(j.ttft_ms.length / 2)], req: j.requests, err: j.errors });
}
const med = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor((s.length - 1) / 2)]; };
console.log("policy        requests  errors  prefix hit rate  mean TTFT ms  p50 TTFT ms");
for (const [p, rs] of Object.entries(by))
  console.log(p.padEnd(14) + String(rs[0].req).padStart(8) + String(rs.reduce((a, r) => a + r.err, 0)).padStart(8) +
    (100 * med(rs.map(r => r.hit))).toFixed(1).padStart(16) + "%" + med(rs.map(r => r.mean)).toFixed(1).padStart(13) +
    med(rs.map(r => r.p50)).toFixed(1).padStart(13));
' "$T/results"
