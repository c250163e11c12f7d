# lib.sh: helpers for the integration scripts, sourced by tests/integ/*.sh (POSIX sh; `make integ`
# runs each script as `BUILD=build sh tests/integ/X.sh`, exit 0 = pass).
#
# A script starts test upstreams (build/tests/kvup) and kvgate on free 127.0.0.1 ports, with every
# log and file in a temporary folder; a trap kills every process it started on exit, prints the logs
# when anything failed, and removes the folder (KV_KEEP=1 keeps it). Assertions print "ok" or
# "FAIL" with what was expected and what came; a failed assertion does not stop the script (the
# next checks still run and report), kv_done exits 1 if any failed. kv_die stops at once.
#
# Needs: curl, openssl, node (tests/js), GNU date and coreutils, /proc.

case $(basename "$0") in lib.sh) exit 0 ;; esac   # `make integ` runs every *.sh: nothing to run here
set -u

BUILD=${BUILD:-build}
# Under ASan, freed memory sits in a quarantine (256 MB by default) that would read as growth in the
# memory checks; keep it small. Leaks are still reported when a process exits.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=8:malloc_context_size=10}"
KV_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$KV_ROOT" || exit 1
case $BUILD in /*) KV_BUILD=$BUILD ;; *) KV_BUILD=$KV_ROOT/$BUILD ;; esac
KVGATE=$KV_BUILD/bin/kvgate
KVUP=$KV_BUILD/tests/kvup
KV_JS=$KV_ROOT/tests/js
KV_NAME=$(basename "$0" .sh)
KV_TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvinteg-$KV_NAME.XXXXXX") || exit 1
KV_PIDS=""
KV_PORTS=""
KV_FAILS=0
KV_OKS=0
KV_NGATE=0
KV_T0=$(date +%s%3N)

kv_ms() { echo $(($(date +%s%3N) - KV_T0)); }
kv_now() { date +%s%3N; }

# ---- results ----

kv_ok() { KV_OKS=$((KV_OKS + 1)); echo "ok   $KV_NAME: $*"; }
kv_fail() { KV_FAILS=$((KV_FAILS + 1)); echo "FAIL $KV_NAME: $*"; }
kv_die() { echo "FATAL $KV_NAME: $*"; exit 1; }

# kv_eq WHAT EXPECTED GOT
kv_eq() {
	if [ "$2" = "$3" ]; then kv_ok "$1"; else kv_fail "$1: expected [$2], got [$3]"; fi
}
# kv_ne WHAT UNEXPECTED GOT
kv_ne() {
	if [ "$2" != "$3" ]; then kv_ok "$1"; else kv_fail "$1: expected anything but [$2], got it"; fi
}
# kv_match WHAT ERE GOT  (extended regular expression, matched anywhere in GOT)
kv_match() {
	if printf '%s' "$3" | grep -Eq -- "$2"; then kv_ok "$1"
	else kv_fail "$1: expected to match /$2/, got [$(printf '%s' "$3" | head -c 600)]"; fi
}
# kv_nomatch WHAT ERE GOT
kv_nomatch() {
	if printf '%s' "$3" | grep -Eq -- "$2"; then
		kv_fail "$1: expected no match of /$2/, got [$(printf '%s' "$3" | head -c 600)]"
	else kv_ok "$1"; fi
}
# kv_le WHAT GOT MAX / kv_ge WHAT GOT MIN  (integers)
kv_le() {
	if [ "$2" -le "$3" ] 2>/dev/null; then kv_ok "$1 ($2 <= $3)"; else kv_fail "$1: expected <= $3, got [$2]"; fi
}
kv_ge() {
	if [ "$2" -ge "$3" ] 2>/dev/null; then kv_ok "$1 ($2 >= $3)"; else kv_fail "$1: expected >= $3, got [$2]"; fi
}
# kv_file_has WHAT ERE FILE  (a line of FILE matches)
kv_file_has() {
	if grep -Eq -- "$2" "$3" 2>/dev/null; then kv_ok "$1"
	else kv_fail "$1: expected a line matching /$2/ in $(basename "$3"), got:"; head -c 1500 "$3" 2>/dev/null; echo; fi
}

kv_done() {
	echo "$KV_NAME: $KV_OKS passed, $KV_FAILS failed ($(kv_ms) ms)"
	[ "$KV_FAILS" -eq 0 ] || exit 1
	exit 0
}

# ---- processes ----

kv_cleanup() {
	rc=$?
	trap - EXIT INT TERM
	[ "$KV_FAILS" -ne 0 ] && [ "$rc" -eq 0 ] && rc=1
	for p in $KV_PIDS; do kill -TERM "$p" 2>/dev/null; done
	i=0
	while [ $i -lt 40 ]; do
		alive=""
		for p in $KV_PIDS; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
		[ -z "$alive" ] && break
		sleep 0.05
		i=$((i + 1))
	done
	for p in $KV_PIDS; do kill -KILL "$p" 2>/dev/null; done
	if [ "$rc" -ne 0 ]; then
		for f in "$KV_TMP"/*.log; do
			[ -f "$f" ] || continue
			echo "---- $KV_NAME: $(basename "$f") (last 40 lines)"
			tail -n 40 "$f"
		done
	fi
	if [ "${KV_KEEP:-0}" = 1 ]; then echo "$KV_NAME: kept $KV_TMP"; else rm -rf "$KV_TMP"; fi
	exit "$rc"
}
trap kv_cleanup EXIT
trap 'exit 130' INT TERM

# Forget a process that the script waited for itself.
kv_forget() {
	n=""
	for p in $KV_PIDS; do [ "$p" = "$1" ] || n="$n $p"; done
	KV_PIDS=$n
}

# kv_port VAR: a free TCP port on 127.0.0.1 (not listening, not handed out before) into VAR.
kv_port() {
	while :; do
		p=$(($(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 30000 + 20000))
		case " $KV_PORTS " in *" $p "*) continue ;; esac
		h=$(printf ':%04X ' "$p")
		grep -q "$h" /proc/net/tcp /proc/net/tcp6 2>/dev/null || break
	done
	KV_PORTS="$KV_PORTS $p"
	eval "$1=$p"
}

# kv_listening PORT: true while something listens on 127.0.0.1:PORT (or any address).
kv_listening() {
	h=$(printf '%04X' "$1")
	grep -Eq "^ *[0-9]+: [0-9A-F]+:$h [0-9A-F]+:0000 0A" /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# kv_wait_port PORT PID [MS]: wait until PORT listens (dies if PID exits first or after MS, 5000).
kv_wait_port() {
	end=$(($(kv_now) + ${3:-5000}))
	while ! kv_listening "$1"; do
		kill -0 "$2" 2>/dev/null || kv_die "process $2 exited before listening on port $1"
		[ "$(kv_now)" -lt "$end" ] || kv_die "nothing listens on port $1 after ${3:-5000} ms"
		sleep 0.02
	done
}

# kv_wait_for WHAT MS COMMAND...: poll COMMAND (every 50 ms) until it succeeds; false after MS.
kv_wait_for() {
	what=$1 ms=$2
	shift 2
	end=$(($(kv_now) + ms))
	while ! "$@"; do
		[ "$(kv_now)" -lt "$end" ] || { echo "   ($what: not true after $ms ms)"; return 1; }
		sleep 0.05
	done
	return 0
}

# kv_bg LOGNAME CMD...: run CMD in the background with stdout+stderr in $KV_TMP/LOGNAME.log;
# its pid in KV_BG_PID (killed at exit).
kv_bg() {
	log=$KV_TMP/$1.log
	shift
	"$@" >"$log" 2>&1 &
	KV_BG_PID=$!
	KV_PIDS="$KV_PIDS $KV_BG_PID"
}

# kv_start_kvup VAR NAME [kvup args...]: start a kvup named NAME on a free port; the port into VAR,
# the pid into KVUP_PID.
kv_start_kvup() {
	[ -x "$KVUP" ] || kv_die "no $KVUP: build it first (make)"
	var=$1 name=$2
	shift 2
	kv_port _kvport
	kv_bg "kvup-$name" "$KVUP" --port "$_kvport" --name "$name" "$@"
	KVUP_PID=$KV_BG_PID
	kv_wait_port "$_kvport" "$KVUP_PID"
	eval "$var=$_kvport"
}

# kv_start_engine VAR [flags...]: kvgate-engine serve on the tiny test model (KV_ENGINE_MODEL) on a
# free port (into VAR), one thread; STEP_MS slows each scheduler step (for timing tests).
KV_ENGINE=$KV_BUILD/bin/kvgate-engine
KV_ENGINE_MODEL=tests/data/engine_tiny
kv_start_engine() {
	[ -x "$KV_ENGINE" ] || kv_die "no $KV_ENGINE: build it first (make)"
	_v=$1
	shift
	kv_port _p
	kv_bg "engine-$_p" env KVGATE_ENGINE_STEP_DELAY_MS="${STEP_MS:-0}" "$KV_ENGINE" serve "$KV_ENGINE_MODEL" \
		--host 127.0.0.1 --port "$_p" --served-model-name tiny --threads 1 "$@"
	kv_wait_port "$_p" "$KV_BG_PID" 10000
	eval "$_v=$_p"
}

# kv_post PORT PATH BODY OUT: POST a JSON body to 127.0.0.1:PORT; the answer in OUT; prints the status
# (KV_POST_MAX seconds at most, 30 by default).
kv_post() { curl -sS --max-time "${KV_POST_MAX:-30}" -o "$4" -w '%{http_code}' -H 'content-type: application/json' \
	"http://127.0.0.1:$1$2" -d "$3" 2>"$4.err"; }

# kv_engine_metric PORT NAME: the first sample of NAME in the engine's /metrics.
kv_engine_metric() { curl -s "http://127.0.0.1:$1/metrics" | sed -n "s/^$2{[^}]*} \([0-9.e+-]*\)$/\1/p" | head -n 1; }

# kv_jval FILE EXPR: JS expression over j, the JSON in FILE: strings as they are, anything else as JSON.
kv_jval() { node -e 'const fs=require("fs");const j=JSON.parse(fs.readFileSync(process.argv[1],"utf8"));const v=eval(process.argv[2]);process.stdout.write(typeof v==="string"?v:JSON.stringify(v))' "$1" "$2"; }

# kv_certs DIR: a local CA and a server certificate for 127.0.0.1 in DIR (tools/mkcert.sh).
kv_certs() {
	sh "$KV_ROOT/tools/mkcert.sh" "$1" >/dev/null || kv_die "tools/mkcert.sh $1 failed"
}

# kv_conf FILE TLS_PORT PLAIN_PORT "UPSTREAM_PORTS" [EXTRA]: write a kvgate configuration.
# An empty TLS_PORT / PLAIN_PORT turns that listener off; UPSTREAM_PORTS are 127.0.0.1 ports of
# the pool "default"; EXTRA is more "key": value lines, each ending with a comma. TLS uses the
# certificates in $KV_TMP/certs (made on first use); the access log goes to $KV_TMP/access.log.
kv_conf() {
	file=$1 tlsp=$2 plainp=$3 ups=$4 extra=${5:-}
	[ -f "$KV_TMP/certs/server.crt" ] || kv_certs "$KV_TMP/certs"
	list=""
	for u in $ups; do list="$list${list:+, }\"127.0.0.1:$u\""; done
	{
		echo "// kvgate configuration written by tests/integ/lib.sh for $KV_NAME"
		echo "{"
		echo "  \"listen\": \"${tlsp:+127.0.0.1:$tlsp}\",   /* TLS listener */"
		echo "  \"listen_plain\": \"${plainp:+127.0.0.1:$plainp}\","
		echo "  \"tls_cert\": \"$KV_TMP/certs/server.crt\","
		echo "  \"tls_key\": \"$KV_TMP/certs/server.key\","
		echo "  \"pools\": [{\"name\": \"default\", \"upstreams\": [$list]}],"
		[ -n "$extra" ] && printf '  %s\n' "$extra"
		echo "  \"access_log\": \"$KV_TMP/access.log\""
		echo "}"
	} >"$file"
}

# kv_start_kvgate CONF PORT...: start kvgate -c CONF and wait until each PORT listens; pid in
# KVGATE_PID, log in KVGATE_LOG ($KV_TMP/kvgate-N.log).
kv_start_kvgate() {
	[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"
	conf=$1
	shift
	KV_NGATE=$((KV_NGATE + 1))
	kv_bg "kvgate-$KV_NGATE" "$KVGATE" -c "$conf"
	KVGATE_PID=$KV_BG_PID
	KVGATE_LOG=$KV_TMP/kvgate-$KV_NGATE.log
	for p in "$@"; do kv_wait_port "$p" "$KVGATE_PID"; done
}

# ---- requests and checks ----

# kv_curl OUT CURL-ARGS...: run curl (10 s cap, --cacert for https) with the body in OUT and the
# response headers in OUT.h; prints the status code (000 when no response).
kv_curl() {
	out=$1
	shift
	curl -sS --max-time "${KV_CURL_MAX:-10}" --cacert "$KV_TMP/certs/ca.crt" -o "$out" -D "$out.h" \
		-w '%{http_code}' "$@" 2>"$out.err"
}

# kv_header FILE.h NAME: the value of response header NAME (last one), CR stripped.
kv_header() {
	grep -i "^$2:" "$1" | tail -n 1 | sed 's/^[^:]*: *//' | tr -d '\r'
}

# kv_stat PORT FIELD: a counter of the kvup on PORT.
kv_stat() {
	curl -s --max-time 5 "http://127.0.0.1:$1/kvup/stats" | sed -n "s/.*\"$2\":\([0-9-]*\).*/\1/p"
}

# kv_stat_sum FIELD PORT...: a kvup counter summed over several instances.
kv_stat_sum() {
	f=$1 sum=0
	shift
	for p in "$@"; do sum=$((sum + $(kv_stat "$p" "$f"))); done
	echo "$sum"
}

# kv_json FILE EXPR: JS expression over j, the parsed JSON in FILE (tests/js/kvcheck.mjs).
kv_json() { node "$KV_JS/kvcheck.mjs" json "$1" "$2"; }
# kv_sse FILE EXPR: JS expression over s, the summary of the SSE body in FILE.
kv_sse() { node "$KV_JS/kvcheck.mjs" sse "$1" "$2"; }
# kv_err WHAT FILE [TYPE]: FILE is an OpenAI-shaped error body (of error.type TYPE).
kv_err() {
	if why=$(node "$KV_JS/kvcheck.mjs" err "$2" ${3:-} 2>&1); then kv_ok "$1: OpenAI-shaped error"
	else kv_fail "$1: $why"; fi
}

# kv_raw [--tls] PORT STEP...: tests/js/raw.mjs (a scripted raw connection); output in
# $KV_TMP/raw.out, its stderr in $KV_TMP/raw.err; returns its status.
kv_raw() { node "$KV_JS/raw.mjs" "$@" >"$KV_TMP/raw.out" 2>"$KV_TMP/raw.err"; }

# kv_metric ERE FILE: the sum of the values of the Prometheus samples in FILE whose line starts
# with a match of ERE, e.g. 'kvgate_requests_total\{.*status="404"' (0 when none).
kv_metric() {
	grep -v "^#" "$2" | grep -E -- "^$1" | awk '{s += $NF} END {printf "%d\n", s}'
}
