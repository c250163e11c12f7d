# proxy_lib.sh: helpers of bench/proxy.sh, proxy_instr.sh and proxy_profile.sh (POSIX sh),
# sourced after setting B_NAME. It resolves BUILD from $1 (default build), makes a temporary
# folder $TMP, kills every process started through it on exit (with their children: nginx
# workers) and removes $TMP (BENCH_KEEP=1 keeps it).
# Needs /proc, wrk, curl, openssl, awk, od.
#
# The servers are configured alike: kvup is the upstream; kvgate has access_log "" and no per-user
# limits; nginx is a reverse proxy with the settings of issue 2 (see b_nginx_conf). Logs go to $TMP.

set -u
B_ARG=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
case $B_ARG in /*) BUILD=$B_ARG ;; *) BUILD=$ROOT/$B_ARG ;; esac
KVGATE=$BUILD/bin/kvgate
KVUP=$BUILD/tests/kvup
LUA=$ROOT/bench/proxy.lua
NGINX=$(command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; })
PIDS=""
PORTS=""

die() { echo "bench/$B_NAME: $*" >&2; exit 1; }
for t in wrk curl openssl awk od; do command -v $t >/dev/null 2>&1 || die "needs $t"; done
[ -x "$KVGATE" ] || die "no $KVGATE: build it first (make)"
[ -x "$KVUP" ] || die "no $KVUP: build it first (make)"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvbench.XXXXXX") || exit 1

children() { cat /proc/"$1"/task/*/children 2>/dev/null; }

b_cleanup() {
	rc=$?
	trap - EXIT INT TERM
	all=""
	for p in $PIDS; do all="$all $p $(children "$p")"; done
	for p in $all; do kill -TERM "$p" 2>/dev/null; done
	i=0
	while [ $i -lt 60 ]; do
		alive=""
		for p in $all; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
		[ -z "$alive" ] && break
		sleep 0.05
		i=$((i + 1))
	done
	for p in $all; do kill -KILL "$p" 2>/dev/null; done
	if [ "$rc" -ne 0 ]; then
		for f in "$TMP"/*.log; do
			[ -s "$f" ] || continue
			echo "---- $(basename "$f") (last 20 lines)" >&2
			tail -n 20 "$f" >&2
		done
	fi
	if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "bench/$B_NAME: kept $TMP" >&2; else rm -rf "$TMP"; fi
	exit "$rc"
}
trap b_cleanup EXIT
trap 'exit 130' INT TERM

# b_port VAR: a free TCP port on 127.0.0.1 into VAR
b_port() {
	while :; do
		p=$(($(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 30000 + 2000))
		case " $PORTS " in *" $p "*) continue ;; esac
		h=$(printf ':%04X ' "$p")
		grep -q "$h" /proc/net/tcp /proc/net/tcp6 2>/dev/null || break
	done
	PORTS="$PORTS $p"
	eval "$1=$p"
}

b_listening() {
	h=$(printf '%04X' "$1")
	grep -Eq "^ *[0-9]+: [0-9A-F]+:$h [0-9A-F]+:0000 0A" /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# b_wait_port PORT PID NAME [TENTHS]: wait until PORT listens (TENTHS of a second, default 50)
b_wait_port() {
	i=0
	while ! b_listening "$1"; do
		kill -0 "$2" 2>/dev/null || die "$3 exited before listening on port $1"
		[ $i -lt $((${4:-50} * 5)) ] || die "$3: nothing listens on port $1"
		sleep 0.02
		i=$((i + 1))
	done
}

# b_bg LOGNAME CMD...: start CMD in the background, output in $TMP/LOGNAME.log, pid in B_PID
b_bg() {
	log=$TMP/$1.log
	shift
	"$@" >"$log" 2>&1 &
	B_PID=$!
	PIDS="$PIDS $B_PID"
}

# b_stop PID: SIGTERM, then wait for it (SIGTERM again every 5 s: nginx under valgrind may miss one)
b_stop() {
	kill -TERM "$1" 2>/dev/null
	i=0
	while kill -0 "$1" 2>/dev/null; do
		sleep 0.1
		i=$((i + 1))
		[ $((i % 50)) -eq 0 ] && kill -TERM "$1" 2>/dev/null
		[ $i -lt 600 ] || { kill -KILL "$1" 2>/dev/null; break; }
	done
	wait "$1" 2>/dev/null
}

# cpu_ns PID...: CPU time (ns) of every thread of these processes and of their children
cpu_ns() {
	for p in "$@"; do
		cat /proc/"$p"/task/*/schedstat 2>/dev/null
		for c in $(children "$p"); do cat /proc/"$c"/task/*/schedstat 2>/dev/null; done
	done | awk '{ s += $1 } END { printf "%.0f\n", s }'
}

b_certs() {
	[ -f "$TMP/certs/server.crt" ] || sh tools/mkcert.sh "$TMP/certs" >/dev/null || die "tools/mkcert.sh failed"
}

# b_kvup: start kvup on a free port: UP (port), UP_PID
b_kvup() {
	b_port UP
	b_bg kvup "$KVUP" --port "$UP" --name kvup-bench
	UP_PID=$B_PID
	b_wait_port "$UP" "$UP_PID" kvup
}

# b_kvgate_conf FILE TLS_PORT PLAIN_PORT: kvgate in front of kvup ($UP), access log off and no
# per-user limits (nginx has none here; kvgate's default of 8 requests in flight per user would
# answer most 64-connection runs 429). The user_defaults key only where this kvgate has it.
b_kvgate_conf() {
	b_certs
	limits=""
	"$KVGATE" --conf-keys 2>/dev/null | grep -q '^user_defaults' &&
		limits='"user_defaults": { "max_concurrent": 0, "requests_per_minute": 0, "tokens_per_minute": 0 },'
	cat >"$1" <<EOF
// written by bench/$B_NAME
{
  "listen": "127.0.0.1:$2",
  "listen_plain": "127.0.0.1:$3",
  "tls_cert": "$TMP/certs/server.crt",
  "tls_key": "$TMP/certs/server.key",
  "access_log": "",
  $limits
  "pools": [{ "name": "default", "upstreams": ["127.0.0.1:$UP"] }]
}
EOF
}

# b_nginx_conf DIR WORKERS PLAIN_PORT TLS_PORT [MASTER]: nginx as a reverse proxy of kvup ($UP)
# with the settings of issue 2 (proxy_buffering off, HTTP/1.1 and keep-alive to the upstream),
# access log off, the error log at crit on stderr, the same certificate and TLS versions as
# kvgate, keep-alive requests unlimited as in kvgate, and what kvgate does per request:
# x-request-id both ways, X-Forwarded-For. MASTER "off": one process (for valgrind).
b_nginx_conf() {
	b_certs
	mkdir -p "$1"
	cat >"$1/nginx.conf" <<EOF
# written by bench/$B_NAME
daemon off;
master_process ${5:-on};
worker_processes $2;
pid $1/nginx.pid;
lock_file $1/nginx.lock;
error_log stderr crit;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    client_max_body_size 8m;
    client_body_buffer_size 64k;
    upstream kvup {
        server 127.0.0.1:$UP;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$3;
        listen 127.0.0.1:$4 ssl;
        ssl_certificate $TMP/certs/server.crt;
        ssl_certificate_key $TMP/certs/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location /v1/ {
            proxy_pass http://kvup;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Request-Id \$request_id;
            add_header X-Request-Id \$request_id always;
            proxy_buffering off;
        }
    }
}
EOF
}

# b_scenario SCENARIO: B_CONNS, B_THREADS, B_STREAM (1: SSE), B_CLOSE (1: Connection: close),
# B_BODY (request body bytes)
#   post-cN  2 KB JSON POST, N keep-alive connections      sse-cN  an SSE stream of 50 events
#   new-cN   the 2 KB POST with Connection: close (a new connection, TLS handshake, per request)
#   big-cN   a 64 KB JSON POST (a long prompt), N keep-alive connections
b_scenario() {
	B_CONNS=${1##*-c}
	B_THREADS=2
	[ "$B_CONNS" -lt 2 ] && B_THREADS=1
	case $1 in sse-*) B_STREAM=1 ;; *) B_STREAM=0 ;; esac
	case $1 in new-*) B_CLOSE=1 ;; *) B_CLOSE=0 ;; esac
	case $1 in big-*) B_BODY=65536 ;; *) B_BODY=2048 ;; esac
}

# b_wrk SCENARIO URL SECONDS OUT: run wrk (the script bench/proxy.lua) into OUT; KVB line checked
b_wrk() {
	b_scenario "$1"
	if [ "$B_CLOSE" = 1 ]; then
		BENCH_STREAM=$B_STREAM BENCH_BODY_BYTES=$B_BODY wrk -t"$B_THREADS" -c"$B_CONNS" -d"$3s" -s "$LUA" -H "x-kvup-events: 50" \
			-H "Connection: close" "$2/v1/chat/completions" >"$4" 2>&1 </dev/null
	else
		BENCH_STREAM=$B_STREAM BENCH_BODY_BYTES=$B_BODY wrk -t"$B_THREADS" -c"$B_CONNS" -d"$3s" -s "$LUA" -H "x-kvup-events: 50" \
			"$2/v1/chat/completions" >"$4" 2>&1 </dev/null
	fi
	grep -q '^KVB ' "$4" || { cat "$4" >&2; die "wrk failed ($1 $2)"; }
}
