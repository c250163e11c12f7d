#!/bin/sh
# `make run`: the product on this machine, CPU only, no download: two kvgate-engine instances on the
# bundled model (models/kvgate-tiny-coder), a short-context and a long-context pool, behind kvgate on
# https://127.0.0.1:8443 with conf/kvgate.conf. Ctrl-C stops everything.
set -e
B=${1:-build}
MODEL=models/kvgate-tiny-coder
NAME=kvgate-tiny-coder
sh tools/mkcert.sh "$B/certs" >/dev/null
mkdir -p "$B/run"
PIDS=""
stop() {
	trap - EXIT INT TERM
	[ -n "$PIDS" ] && kill $PIDS 2>/dev/null || true # some may have stopped already (Ctrl-C reaches them too)
	wait 2>/dev/null
	echo "make run: stopped"
}
trap stop EXIT INT TERM

# KV memory: 6 layers x 144 values x 4 bytes (f32 on the CPU) = 3456 B per token; 16384 tokens each.
"$B/bin/kvgate-engine" serve "$MODEL" --served-model-name "$NAME" --host 127.0.0.1 --port 8001 \
	--max-model-len 2048 --max-num-seqs 8 --kv-cache-memory 64M >"$B/run/engine-short.log" 2>&1 &
PIDS="$PIDS $!"
"$B/bin/kvgate-engine" serve "$MODEL" --served-model-name "$NAME" --host 127.0.0.1 --port 8002 \
	--max-model-len 8192 --max-num-seqs 2 --kv-cache-memory 64M >"$B/run/engine-long.log" 2>&1 &
PIDS="$PIDS $!"
for port in 8001 8002; do
	i=0
	until curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
		i=$((i + 1))
		if [ $i -gt 300 ]; then
			echo "make run: the engine on port $port did not start; its log:" >&2
			cat "$B"/run/engine-*.log >&2
			exit 1
		fi
		sleep 0.1
	done
done
cat <<MSG
make run: engines on 127.0.0.1:8001 (short, 2048 tokens) and :8002 (long, 8192 tokens); logs in $B/run/
kvgate: https://127.0.0.1:8443 (model "$NAME", demo key "kvgate-demo-key"). From another terminal:

  curl --cacert $B/certs/ca.crt https://127.0.0.1:8443/v1/chat/completions \\
       -H 'Authorization: Bearer kvgate-demo-key' -H 'content-type: application/json' \\
       -d '{"model":"$NAME","messages":[{"role":"user","content":"Write a Python function that reverses a string."}],"stream":true}'

Ctrl-C stops everything.
MSG
"$B/bin/kvgate" -c conf/kvgate.conf &
GW=$!
PIDS="$PIDS $GW"
wait $GW
