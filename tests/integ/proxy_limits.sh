#!/bin/sh
# proxy_limits.sh: kvgate's caps, each with its status and an OpenAI-shaped body: header bytes and
# count (431), body size (413, Content-Length and chunked), header read timeout (408 or close), idle
# keep-alive timeout, max_connections (503 then close). A kvgate with small limits.
. "$(dirname "$0")/lib.sh"

[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"
kv_start_kvup UP up1
kv_port P
C=$KV_TMP/kvgate.conf
R=$KV_TMP/r
U=http://127.0.0.1:$P
kv_conf "$C" "" "$P" "$UP" '"max_header_bytes": 2048, "max_headers": 20, "max_body_bytes": 4096,
  "header_timeout_ms": 700, "idle_timeout_ms": 1500, "max_connections": 6,'
kv_start_kvgate "$C" "$P"

# ---- header bytes and count ----
big=$(printf '%03000d' 0)
kv_eq "one 3000-byte header (cap 2048) -> 431" 431 "$(kv_curl "$R" "$U/v1/models" -H "x-big: $big")"
kv_err "431 header bytes" "$R"
kv_eq "a 1500-byte header is fine" 200 "$(kv_curl "$R" "$U/v1/models" -H "x-big: $(printf '%01500d' 0)")"
set --
i=0
while [ $i -lt 30 ]; do set -- "$@" -H "x-h$i: $i"; i=$((i + 1)); done
kv_eq "30 headers (cap 20) -> 431" 431 "$(kv_curl "$R" "$U/v1/models" "$@")"
kv_err "431 header count" "$R"
set --
i=0
while [ $i -lt 12 ]; do set -- "$@" -H "x-h$i: $i"; i=$((i + 1)); done
kv_eq "12 headers (+ curl's 3) are fine" 200 "$(kv_curl "$R" "$U/v1/models" "$@")"
set --

# ---- body size ----
printf '{"model":"m","pad":"%05000d"}' 0 >"$KV_TMP/big.json"
printf '{"model":"m","pad":"%03900d"}' 0 >"$KV_TMP/ok.json"
before=$(kv_stat "$UP" requests)
kv_eq "5 KB body (cap 4096) -> 413" 413 "$(kv_curl "$R" "$U/v1/chat/completions" --data-binary @"$KV_TMP/big.json")"
kv_err "413" "$R"
kv_eq "5 KB chunked body -> 413" 413 "$(kv_curl "$R" "$U/v1/chat/completions" -H 'Transfer-Encoding: chunked' \
	--data-binary @"$KV_TMP/big.json")"
kv_eq "5 KB body to a passthrough route -> 413" 413 "$(kv_curl "$R" "$U/v1/echo" --data-binary @"$KV_TMP/big.json")"
kv_eq "a body over the cap never reaches the upstream" "$before" "$(kv_stat "$UP" requests)"
kv_eq "3.9 KB body is fine" 200 "$(kv_curl "$R" "$U/v1/chat/completions" --data-binary @"$KV_TMP/ok.json")"
kv_eq "3.9 KB chunked body is fine" 200 "$(kv_curl "$R" "$U/v1/echo" -H 'Transfer-Encoding: chunked' \
	--data-binary @"$KV_TMP/ok.json")"

# ---- header read timeout: a request that stops mid-headers gets 408 (or a close) after ~700 ms ----
if kv_raw "$P" 'send:GET /v1/models HTTP/1.1\r\nHo' 'open:400' 'closed:2500'; then
	kv_ok "header timeout closes the connection (not before 400 ms, by 2.9 s)"
	got=$(head -c 200 "$KV_TMP/raw.out")
	if [ -z "$got" ] || printf '%s' "$got" | grep -q '^HTTP/1.1 408'; then kv_ok "header timeout: 408 or nothing"
	else kv_fail "header timeout: expected 408 or nothing, got [$got]"; fi
else kv_fail "header timeout: $(cat "$KV_TMP/raw.err")"; fi
if kv_raw "$P" 'open:400' 'closed:2500'; then kv_ok "a connection that sends nothing is closed too"
else kv_fail "a silent connection: $(cat "$KV_TMP/raw.err")"; fi

# ---- idle keep-alive timeout: open after a request, closed ~1.5 s later ----
if kv_raw "$P" 'send:GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n' 'expect:2000:HTTP/1.1 200' 'open:900' \
	'send:GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n' 'expect:2000:HTTP/1.1 200.*HTTP/1.1 200' 'open:900' 'closed:2500'
then kv_ok "idle keep-alive: kept past 900 ms twice, then closed"
else kv_fail "idle keep-alive timeout: $(cat "$KV_TMP/raw.err")"; fi

# ---- max_connections: 6 held, the 7th gets 503 and a close; room again once they go ----
kv_bg hold node "$KV_JS/raw.mjs" hold "$P" 6 1200 'GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n'
HOLD=$KV_BG_PID
if kv_wait_for "6 connections held" 3000 grep -q '^held 6' "$KV_TMP/hold.log"; then
	if kv_raw "$P" 'send:GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n' 'expect:2000:^HTTP/1.1 503' 'closed:1000'; then
		kv_ok "max_connections: 503 then close"
		sed -n '/^\r\{0,1\}$/,$p' "$KV_TMP/raw.out" | tail -n +2 >"$R"
		kv_err "503 max_connections" "$R"
	else kv_fail "max_connections: $(cat "$KV_TMP/raw.err")"; head -c 500 "$KV_TMP/raw.out"; echo; fi
else kv_fail "could not hold 6 connections: $(cat "$KV_TMP/hold.log")"; fi
kill "$HOLD" 2>/dev/null
wait "$HOLD" 2>/dev/null
kv_forget "$HOLD"
ok=0
end=$(($(kv_now) + 2000))
while [ "$(kv_now)" -lt "$end" ]; do
	[ "$(kv_curl "$R" "$U/v1/models")" = 200 ] && { ok=1; break; }
	sleep 0.1
done
kv_eq "after the held connections close, a new one is served" 1 "$ok"
kill -0 "$KVGATE_PID" 2>/dev/null || kv_fail "kvgate died"
kv_done
