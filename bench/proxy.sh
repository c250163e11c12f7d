#!/bin/sh
# proxy.sh [BUILD]: the proxy benchmark of issue 2 item 5 (`make bench-proxy` runs it as
# `sh bench/proxy.sh build`). In one run, against one test upstream (BUILD/tests/kvup), wrk measures
#   direct   wrk -> kvup (plain HTTP only: kvup has no TLS; it is the base of both transports)
#   kvgate   wrk -> kvgate -> kvup          (access_log "", one event loop)
#   nginx-1  wrk -> nginx -> kvup           (worker_processes 1: kvgate's single event loop)
#   nginx-a  wrk -> nginx -> kvup           (worker_processes auto: one worker per CPU)
# over plain HTTP and TLS (same certificate, tools/mkcert.sh), in five scenarios:
#   post-c64   2 KB JSON POST /v1/chat/completions (non-stream), 64 keep-alive connections
#   post-c1    the same, 1 connection (latency)
#   sse-c64    an SSE stream of 50 events ("stream": true, x-kvup-events: 50), 64 connections
#   sse-c1     the same, 1 connection
#   new-c64    the 2 KB POST with `Connection: close`: a new connection (TLS: a handshake) per
#              request, 64 at a time. wrk keeps its TLS session across reconnects, so over TLS
#              these are TLS 1.3 resumed handshakes (ticket + X25519, no certificate signature).
# and, when asked for (BENCH_SCEN), big-c1 / big-c64: a 64 KB JSON POST (a long prompt).
# Targets are interleaved (direct kvgate nginx-1 nginx-a, then again, ...) and the whole set is
# repeated; the table gives medians over the repetitions of: requests/s, wrk's p50 and p99
# latency, the ratio to direct and the latency added over direct in the same repetition, and the
# process's own CPU time per request: the first field of /proc/PID/task/*/schedstat summed over all
# threads (nginx: master and workers), before and after each wrk run, divided by the requests wrk
# completed. On a shared 2-core machine raw requests/s moves 10-35% between runs; CPU per request
# and the ratio to direct are the steady figures (bench/proxy_instr.sh counts instructions instead:
# no noise at all).
#
# Knobs (environment): BENCH_DUR seconds per wrk run (3), BENCH_REPS repetitions (3),
# BENCH_NGINX "1 auto" (nginx worker_processes values to run; "" = no nginx),
# BENCH_SCEN the scenarios to run (all five), BENCH_TLS "plain tls", BENCH_KEEP=1 keeps the
# temporary folder (configurations, logs, raw results). About 6 minutes with the defaults.
# Every process it starts is killed on exit; access logs are off, error logs (level crit for
# nginx) go to the temporary folder, which is removed at the end.
B_NAME=proxy.sh
. "$(dirname "$0")/proxy_lib.sh"

DUR=${BENCH_DUR:-3}
REPS=${BENCH_REPS:-3}
NGX=${BENCH_NGINX-1 auto}
SCEN=${BENCH_SCEN:-post-c64 post-c1 sse-c64 sse-c1 new-c64}
TRS=${BENCH_TLS:-plain tls}
EVENTS=50
if [ -z "$NGINX" ] && [ -n "$NGX" ]; then
	echo "bench/proxy.sh: no nginx found: running without it" >&2
	NGX=""
fi

# ---- start: upstream, kvgate, nginx ----

b_kvup
b_port KG_PLAIN
b_port KG_TLS
b_kvgate_conf "$TMP/kvgate.conf" "$KG_TLS" "$KG_PLAIN"
b_bg kvgate "$KVGATE" -c "$TMP/kvgate.conf"
KG_PID=$B_PID
b_wait_port "$KG_PLAIN" "$KG_PID" kvgate
b_wait_port "$KG_TLS" "$KG_PID" kvgate

TARGETS="direct kvgate"
for w in $NGX; do
	b_port NP
	b_port NT
	b_nginx_conf "$TMP/nginx-$w" "$w" "$NP" "$NT"
	b_bg "nginx-$w" "$NGINX" -p "$TMP/nginx-$w" -c "$TMP/nginx-$w/nginx.conf" -e stderr
	b_wait_port "$NP" "$B_PID" "nginx ($w)"
	b_wait_port "$NT" "$B_PID" "nginx ($w)"
	n=$(echo "$w" | cut -c1)
	TARGETS="$TARGETS nginx-$n"
	eval "PLAIN_nginx_$n=$NP TLS_nginx_$n=$NT PID_nginx_$n=$B_PID NW_nginx_$n=\$(children $B_PID | wc -w)"
done
PLAIN_direct=$UP PID_direct=$UP_PID
PLAIN_kvgate=$KG_PLAIN TLS_kvgate=$KG_TLS PID_kvgate=$KG_PID

# url TARGET TRANSPORT
url() {
	v=$(echo "$1" | tr - _)
	if [ "$2" = tls ]; then eval "echo https://127.0.0.1:\$TLS_$v"; else eval "echo http://127.0.0.1:\$PLAIN_$v"; fi
}
pid_of() { v=$(echo "$1" | tr - _); eval "echo \$PID_$v"; }

# ---- sanity: every target answers like kvup itself ----

BODY='{"model":"kvup-bench","stream":STREAM,"messages":[{"role":"user","content":"hi"}]}'
check() {
	u=$(url "$1" "$2")
	nb=$(curl -sS --cacert "$TMP/certs/ca.crt" -D "$TMP/h" -H 'content-type: application/json' \
		-d "$(echo "$BODY" | sed s/STREAM/false/)" "$u/v1/chat/completions" | grep -c '"chat.completion"')
	grep -qi '^x-kvup-name: kvup-bench' "$TMP/h" && [ "$nb" = 1 ] ||
		die "$1 ($2): the non-stream answer is not kvup's: $(head -c 300 "$TMP/h")"
	ne=$(curl -sS -N --cacert "$TMP/certs/ca.crt" -H 'content-type: application/json' \
		-H "x-kvup-events: $EVENTS" -d "$(echo "$BODY" | sed s/STREAM/true/)" "$u/v1/chat/completions" |
		grep -c '^data: ')
	echo "$ne"
}
ref=$(check direct plain)
[ "$ref" -ge $EVENTS ] 2>/dev/null || die "kvup sent [$ref] SSE events, expected at least $EVENTS"
for t in $TARGETS; do
	for tr in $TRS; do
		[ "$t" = direct ] && [ "$tr" = tls ] && continue
		n=$(check "$t" "$tr")
		[ "$n" = "$ref" ] || die "$t ($tr): [$n] SSE events, direct: $ref"
	done
done

# ---- runs ----

# run REP SCEN TRANSPORT TARGET: one wrk run; appends a line to $TMP/raw:
#   rep scen tr target requests rps p50_us p99_us errors status_errors cpu_ns upstream_cpu_ns
run() {
	rep=$1 sc=$2 tr=$3 t=$4
	pid=$(pid_of "$t")
	p0=$(cpu_ns "$pid")
	u0=$(cpu_ns "$UP_PID")
	b_wrk "$sc" "$(url "$t" "$tr")" "$DUR" "$TMP/wrk.out"
	p1=$(cpu_ns "$pid")
	u1=$(cpu_ns "$UP_PID")
	grep '^KVB ' "$TMP/wrk.out" | awk -v rep="$rep" -v sc="$sc" -v tr="$tr" -v t="$t" \
		-v cpu=$((p1 - p0)) -v ucpu=$((u1 - u0)) '{
		for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
		print rep, sc, tr, t, f["requests"], f["rps"], f["p50_us"], f["p99_us"], f["errors"],
		      f["status_errors"], cpu, ucpu
	}' >>"$TMP/raw"
	tail -n 1 "$TMP/raw" | awk '{ printf "  rep %s %-8s %-5s %-7s %9.0f req/s  p50 %6d us  p99 %6d us  cpu %6.1f us/req%s\n",
		$1, $2, $3, $4, $6, $7, $8, $5 ? $11 / $5 / 1000 : 0, ($9 + $10) ? "  errors " ($9 + $10) : "" }' >&2
}

# the order of one repetition: per scenario, direct then each proxy over plain, then over TLS
for sc in $SCEN; do
	for tr in $TRS; do
		for t in $TARGETS; do
			[ "$t" = direct ] && [ "$tr" = tls ] && continue
			echo "$sc $tr $t"
		done
	done
done >"$TMP/order"

: >"$TMP/raw"
echo "bench/proxy.sh: warm-up (1 s per target)" >&2
for tr in $TRS; do
	for t in $TARGETS; do
		[ "$t" = direct ] && [ "$tr" = tls ] && continue
		b_wrk post-c64 "$(url "$t" "$tr")" 1 "$TMP/wrk.out"
	done
done
nruns=$(wc -l <"$TMP/order")
echo "bench/proxy.sh: $REPS repetitions of $nruns runs of $DUR s (about $(((REPS * nruns * DUR * 11 / 10 + 59) / 60)) min)" >&2
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
r=1
while [ $r -le "$REPS" ]; do
	while read -r sc tr t; do run "$r" "$sc" "$tr" "$t" </dev/null; done <"$TMP/order"
	r=$((r + 1))
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the table ----

nginx_v=""
[ -n "$NGINX" ] && nginx_v=$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')
echo
echo "kvgate bench-proxy: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), Linux $(uname -r), OpenSSL $(openssl version | awk '{print $2}'), nginx ${nginx_v:-none}, wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}')"
echo "medians of $REPS interleaved repetitions of ${DUR} s wrk runs; upstream: kvup (one event loop) on 127.0.0.1; wrk -t2 at 64 connections, -t1 at 1"
echo "targets: direct = wrk -> kvup over plain HTTP (kvup has no TLS: it is the base of the TLS rows too);"
echo "  kvgate = one event loop, access_log off; nginx-1 = worker_processes 1 (matches kvgate's single event loop);"
echo "  nginx-a = worker_processes auto (${NW_nginx_a:-?} workers); nginx: proxy_buffering off, proxy_http_version 1.1, upstream keepalive 64, access_log off"
echo "scenarios: post = 2 KB JSON POST /v1/chat/completions (non-stream); sse = one SSE stream of $EVENTS events per request; big = 64 KB POST;"
echo "  c64/c1 = keep-alive connections; new = Connection: close, a new connection per request (TLS: a TLS 1.3 resumed handshake)"
echo "ratio = req/s over direct's in the same repetition; +p50/+p99 = latency added over direct in the same repetition;"
echo "cpu = the process's own CPU time per request, all threads (nginx: master + workers; direct: kvup's own)"
echo "load average before: $LOAD0, after: $LOAD1 (above ~1: other work shared the CPUs)"
echo
awk -v scen="$SCEN" -v trs="$TRS" -v targets="$TARGETS" '
function median(s,   a, n, i, j, x) {
	n = split(s, a, " ")
	for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > x + 0; j--) a[j + 1] = a[j]; a[j + 1] = x }
	if (n == 0) return ""
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
	rep = $1; k = $2 SUBSEP $3 SUBSEP $4
	rps[rep, k] = $6; p50[rep, k] = $7; p99[rep, k] = $8
	err[k] += $9 + $10; cpu[rep, k] = $5 ? $11 / $5 / 1000 : 0
	reps[rep] = 1; seen[k] = 1
}
END {
	printf "%-9s %-5s %-8s %9s %6s %8s %7s %8s %7s %8s %6s\n", "scenario", "tls", "target", "req/s",
	       "ratio", "p50 us", "+p50", "p99 us", "+p99", "cpu us", "errors"
	ns = split(scen, S, " "); nt = split(trs, T, " "); ng = split(targets, G, " ")
	for (a = 1; a <= ns; a++) for (b = 1; b <= nt; b++) for (c = 1; c <= ng; c++) {
		k = S[a] SUBSEP T[b] SUBSEP G[c]
		if (!(k in seen)) continue
		base = S[a] SUBSEP "plain" SUBSEP "direct"
		l_rps = l_p50 = l_p99 = l_cpu = l_ratio = l_d50 = l_d99 = ""
		for (r in reps) {
			if (!((r, k) in rps)) continue
			l_rps = l_rps " " rps[r, k]; l_p50 = l_p50 " " p50[r, k]; l_p99 = l_p99 " " p99[r, k]
			l_cpu = l_cpu " " cpu[r, k]
			if ((r, base) in rps && rps[r, base] > 0) {
				l_ratio = l_ratio " " rps[r, k] / rps[r, base]
				l_d50 = l_d50 " " p50[r, k] - p50[r, base]; l_d99 = l_d99 " " p99[r, k] - p99[r, base]
			}
		}
		isd = G[c] == "direct"
		printf "%-9s %-5s %-8s %9.0f %6s %8.0f %7s %8.0f %7s %8.1f %6d\n", S[a], T[b], G[c],
		       median(l_rps), isd ? "-" : sprintf("%.2f", median(l_ratio)), median(l_p50),
		       isd ? "-" : sprintf("%+.0f", median(l_d50)), median(l_p99),
		       isd ? "-" : sprintf("%+.0f", median(l_d99)), median(l_cpu), err[k]
	}
}' "$TMP/raw"
echo
echo "command: BENCH_DUR=$DUR BENCH_REPS=$REPS BENCH_NGINX=\"$NGX\" sh bench/proxy.sh $B_ARG"
