#!/bin/sh
# proxy_instr.sh [BUILD]: user-space instructions per request of kvgate and of nginx (one process,
# master_process off, the configuration of bench/proxy.sh), counted by valgrind's callgrind in the
# 1-connection scenarios of bench/proxy.sh, plain and TLS. Unlike CPU time, instruction counts do
# not move with the other work on a shared machine, so this is the steady comparison of the two
# proxies' own code (the kernel's share, the socket calls, is not in it: see bench/NOTES.md).
# Each server runs under callgrind for the whole script; per scenario its counters are zeroed
# (callgrind_control -z), wrk runs BENCH_DUR seconds (4; under valgrind a few hundred to a few
# thousand requests) and the counters are dumped (callgrind_control -d). Then, for kvgate, the
# functions with the most inclusive instructions per request in each scenario.
# Knobs: BENCH_DUR, BENCH_SCEN ("post-c1 sse-c1 new-c1"), BENCH_TLS ("plain tls"), BENCH_TOP (16),
# BENCH_KEEP=1 keeps the dumps (callgrind_annotate FILE).
set -u
B_NAME=proxy_instr.sh
. "$(dirname "$0")/proxy_lib.sh"
DUR=${BENCH_DUR:-4}
SCEN=${BENCH_SCEN:-post-c1 sse-c1 new-c1}
TRS=${BENCH_TLS:-plain tls}
TOP=${BENCH_TOP:-16}
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || die "needs valgrind"
[ -n "$NGINX" ] || die "needs nginx"

b_kvup
b_port KP
b_port KT
b_kvgate_conf "$TMP/kvgate.conf" "$KT" "$KP"
b_bg kvgate valgrind --tool=callgrind --callgrind-out-file="$TMP/kvgate.cg" "$KVGATE" -c "$TMP/kvgate.conf"
KG=$B_PID
b_port NP
b_port NT
b_nginx_conf "$TMP/nginx" 1 "$NP" "$NT" off
b_bg nginx valgrind --tool=callgrind --callgrind-out-file="$TMP/nginx.cg" "$NGINX" -p "$TMP/nginx" \
	-c "$TMP/nginx/nginx.conf" -e stderr
NG=$B_PID
b_wait_port "$KP" "$KG" kvgate 300
b_wait_port "$KT" "$KG" kvgate 300
b_wait_port "$NP" "$NG" nginx 300
b_wait_port "$NT" "$NG" nginx 300

# measure NAME PID URL SCEN TR: instructions per request into $TMP/res, the dump kept as NAME.SCEN.TR
measure() {
	callgrind_control -z "$2" >/dev/null 2>&1 || die "callgrind_control -z $2 failed"
	b_wrk "$4" "$3" "$DUR" "$TMP/wrk.out"
	rm -f "$TMP/$1.cg".*
	callgrind_control -d "$2" >/dev/null 2>&1 || die "callgrind_control -d $2 failed"
	f=$(ls "$TMP/$1.cg".* 2>/dev/null | tail -n 1)
	[ -n "$f" ] || die "no callgrind dump for $1"
	mv "$f" "$TMP/$1.$4.$5"
	req=$(awk '/^KVB/ { sub("requests=", "", $2); print $2 }' "$TMP/wrk.out")
	ir=$(awk '/^totals:/ { print $2 }' "$TMP/$1.$4.$5")
	echo "$1 $4 $5 $req $ir" >>"$TMP/res"
	echo "  $1 $4 $5: $req requests, $ir instructions" >&2
}

: >"$TMP/res"
for sc in $SCEN; do
	for tr in $TRS; do
		if [ "$tr" = tls ]; then ku=https://127.0.0.1:$KT nu=https://127.0.0.1:$NT
		else ku=http://127.0.0.1:$KP nu=http://127.0.0.1:$NP; fi
		b_wrk "$sc" "$ku" 1 "$TMP/wrk.out"  # warm-up (pooled connections, first handshake)
		b_wrk "$sc" "$nu" 1 "$TMP/wrk.out"
		measure kvgate "$KG" "$ku" "$sc" "$tr"
		measure nginx "$NG" "$nu" "$sc" "$tr"
	done
done

echo
echo "kvgate bench instr: $(date -u '+%Y-%m-%d %H:%M UTC'), valgrind $(valgrind --version | sed 's/valgrind-//'), OpenSSL $(openssl version | awk '{print $2}'), nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///')"
echo "user-space instructions per request (callgrind Ir: the process and its libraries, no kernel), one connection, ${DUR} s of wrk under valgrind;"
echo "nginx: master_process off, one worker, the configuration of bench/proxy.sh; post = 2 KB JSON POST, sse = 50-event stream, new = Connection: close"
echo
awk '
{ k = $2 " " $3; req[$1, k] = $4; ir[$1, k] = $5; if (!(k in seen)) { seen[k] = 1; order[++n] = k } }
END {
	printf "%-8s %-5s %12s %12s %7s %9s %9s\n", "scenario", "tls", "kvgate", "nginx", "ratio", "kvgate n", "nginx n"
	for (i = 1; i <= n; i++) {
		k = order[i]; split(k, p, " ")
		a = req["kvgate", k] ? ir["kvgate", k] / req["kvgate", k] : 0
		b = req["nginx", k] ? ir["nginx", k] / req["nginx", k] : 0
		printf "%-8s %-5s %12.0f %12.0f %7.2f %9d %9d\n", p[1], p[2], a, b, b ? a / b : 0, req["kvgate", k], req["nginx", k]
	}
}' "$TMP/res"

echo
echo "kvgate: functions by inclusive instructions per request (the event loop's frames left out)"
while read -r name sc tr req ir; do
	[ "$name" = kvgate ] || continue
	echo "== $sc $tr ($req requests)"
	callgrind_annotate --inclusive=yes --threshold=100 "$TMP/kvgate.$sc.$tr" 2>/dev/null |
		awk -v req="$req" -v top="$TOP" '
		/^ *[0-9,]+ +\(/ && /:/ {
			n = $1; gsub(",", "", n)
			s = $0; sub(/^ *[0-9,]+ +\([^)]*\) +/, "", s)
			sub(/ \[.*$/, "", s); sub(/^.*\//, "", s); sub(/^\?\?\?:/, "", s)
			if (s ~ /^(0x|\(below main\)|main$|serve$|event_base_|libc-start|libc_start|main\.c:(main|serve))/ || s ~ /(below main)|libc_start_call_main|bufferevent_run_|evbuffer_run_callbacks/) next
			if (s in shown) next
			shown[s] = 1
			if (++k > top) exit
			printf "  %9.0f  %s\n", n / req, s
		}'
done <"$TMP/res"
