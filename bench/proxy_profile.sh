#!/bin/sh
# proxy_profile.sh [BUILD] [SCENARIO] [plain|tls]: where kvgate's CPU goes in one scenario of
# bench/proxy.sh (post-c64 post-c1 sse-c64 sse-c1 new-c64; default post-c64 plain). Starts kvup and
# kvgate as bench/proxy.sh does, runs wrk for BENCH_DUR seconds (5) and samples kvgate meanwhile
# with `perf record -e cpu-clock --call-graph dwarf` (a software clock: this VM exposes no hardware
# counters), then prints kvgate's CPU per request, the split by library, the hottest functions by
# their own time, and the call tree's functions by inclusive time (kvgate's and the libraries').
set -u
B_NAME=proxy_profile.sh
. "$(dirname "$0")/proxy_lib.sh"
SC=${2:-post-c64}
TR=${3:-plain}
DUR=${BENCH_DUR:-5}
command -v perf >/dev/null || die "needs perf"

b_kvup
b_port KP
b_port KT
b_kvgate_conf "$TMP/kvgate.conf" "$KT" "$KP"
b_bg kvgate "$KVGATE" -c "$TMP/kvgate.conf"
KG=$B_PID
b_wait_port "$KP" "$KG" kvgate
b_wait_port "$KT" "$KG" kvgate
if [ "$TR" = tls ]; then U=https://127.0.0.1:$KT; else U=http://127.0.0.1:$KP; fi

b_wrk post-c64 "$U" 1 "$TMP/wrk.out"  # warm-up
c0=$(cpu_ns "$KG")
perf record -q -e cpu-clock -F 2999 --call-graph dwarf,16384 -o "$TMP/perf.data" -p "$KG" \
	-- sleep "$DUR" >"$TMP/perf.log" 2>&1 &
PERF=$!
b_wrk "$SC" "$U" "$DUR" "$TMP/wrk.out"
c1=$(cpu_ns "$KG")
wait "$PERF"
req=$(awk '/^KVB/ { sub("requests=", "", $2); print $2 }' "$TMP/wrk.out")
echo "scenario $SC $TR: $(grep '^KVB' "$TMP/wrk.out" | cut -c5-)"
echo "kvgate CPU: $(awk -v c=$((c1 - c0)) -v r="$req" 'BEGIN { printf "%.1f us/request", c / r / 1000 }') (perf sampling included)"
echo
echo "== by library (self time)"
perf report -i "$TMP/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
	grep '%' | grep -v '^#' | head -10
echo
echo "== hottest functions, self time (kernel included)"
perf report -i "$TMP/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
	grep '%' | grep -v '^#' | head -40 | awk '{ $NF = ""; $(NF-1) = ""; print }'
echo
echo "== inclusive time (children included)"
perf report -i "$TMP/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
	grep '%' | grep -v '^#' | grep -v '0x0000' | head -80 | awk '{ $NF = ""; $(NF-1) = ""; print }'
