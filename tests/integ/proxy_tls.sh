#!/bin/sh
# proxy_tls.sh: kvgate's TLS listener with real clients: curl verifying against the local CA,
# openssl s_client (TLS 1.2, TLS 1.3, ALPN http/1.1; TLS 1.1 refused, with a control server that
# shows the probe can connect), keep-alive over TLS, handshake metrics, garbage on the TLS port, and
# the certificate re-read on SIGHUP without dropping an open connection.
. "$(dirname "$0")/lib.sh"

[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"
kv_start_kvup UP up1
kv_port T
kv_port P
C=$KV_TMP/kvgate.conf
R=$KV_TMP/r
S=https://127.0.0.1:$T
kv_conf "$C" "$T" "$P" "$UP"
kv_start_kvgate "$C" "$T" "$P"
CA=$KV_TMP/certs/ca.crt

metrics() { curl -s --max-time 5 "http://127.0.0.1:$P/metrics" >"$KV_TMP/m"; }
metrics
hs0=$(kv_metric kvgate_tls_handshakes_total "$KV_TMP/m")
hf0=$(kv_metric kvgate_tls_handshake_failures_total "$KV_TMP/m")

# ---- curl, verifying the chain (no -k) ----
kv_eq "curl https GET /v1/models (verified)" 200 "$(kv_curl "$R" "$S/v1/models")"
kv_eq "  relayed" up1 "$(kv_json "$R" 'j.data[0].id')"
kv_eq "curl https localhost name (SAN)" 200 "$(kv_curl "$R" --resolve "localhost:$T:127.0.0.1" "https://localhost:$T/health")"
kv_eq "curl https POST chat" 200 "$(kv_curl "$R" "$S/v1/chat/completions" -d '{"model":"m","messages":[]}')"
kv_eq "curl --http1.1 --tlsv1.2 --tls-max 1.2" 200 "$(kv_curl "$R" --tlsv1.2 --tls-max 1.2 "$S/health")"
kv_eq "curl --tlsv1.3" 200 "$(kv_curl "$R" --tlsv1.3 "$S/health")"
n=$(curl -sS --max-time 10 --cacert "$CA" -o /dev/null -o /dev/null -w '%{num_connects} ' "$S/v1/models" "$S/health")
kv_eq "keep-alive over TLS: the second request reuses the connection" "1 0 " "$n"
kv_eq "curl with ALPN h2 offered falls back to http/1.1" "200 1.1" \
	"$(curl -sS --max-time 10 --cacert "$CA" --http2 -o /dev/null -w '%{http_code} %{http_version}' "$S/health")"

# ---- openssl s_client ----
sc() {   # sc PORT ARGS...: one s_client session sending GET /health; output in $KV_TMP/sc.out
	p=$1
	shift
	printf 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' |
		timeout 10 openssl s_client -connect "127.0.0.1:$p" -servername localhost -CAfile "$CA" \
		-ign_eof "$@" >"$KV_TMP/sc.out" 2>&1
}
sc "$T" -tls1_2
kv_match "s_client -tls1_2: protocol" 'Protocol *: TLSv1\.2' "$(cat "$KV_TMP/sc.out")"
kv_match "s_client -tls1_2: verified chain" 'Verify return code: 0 \(ok\)' "$(cat "$KV_TMP/sc.out")"
kv_match "s_client -tls1_2: HTTP answer" 'HTTP/1.1 200' "$(cat "$KV_TMP/sc.out")"
sc "$T" -tls1_3
kv_match "s_client -tls1_3: protocol" 'Protocol *: TLSv1\.3|New, TLSv1\.3' "$(cat "$KV_TMP/sc.out")"
kv_match "s_client -tls1_3: HTTP answer" 'HTTP/1.1 200' "$(cat "$KV_TMP/sc.out")"
sc "$T" -alpn http/1.1
kv_match "s_client -alpn http/1.1: selected" 'ALPN protocol: http/1.1' "$(cat "$KV_TMP/sc.out")"
sc "$T" -alpn h2,http/1.1
kv_match "s_client -alpn h2,http/1.1: http/1.1 chosen" 'ALPN protocol: http/1.1' "$(cat "$KV_TMP/sc.out")"

# TLS 1.1: first prove the probe works against a server that allows it, then that kvgate refuses it
kv_port O
kv_bg ossl-server openssl s_server -accept "$O" -cert "$KV_TMP/certs/server.crt" -key "$KV_TMP/certs/server.key" \
	-tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' -www -quiet
OPID=$KV_BG_PID
kv_wait_port "$O" "$OPID"
sc "$O" -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'
kv_match "control: the TLS 1.1 probe connects to a TLS 1.1 server" 'Cipher is [A-Z]' "$(cat "$KV_TMP/sc.out")"
kill "$OPID" 2>/dev/null
sc "$T" -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'
kv_nomatch "s_client -tls1_1 is refused (no cipher agreed, no answer)" 'Cipher is [A-Z]|HTTP/1.1 200' "$(cat "$KV_TMP/sc.out")"
kv_match "  with a protocol version alert" 'alert protocol version|unsupported protocol|wrong version|no protocols' \
	"$(cat "$KV_TMP/sc.out")"

# garbage and plain HTTP on the TLS port: a failed handshake, no crash
curl -s --max-time 3 "http://127.0.0.1:$T/health" -o /dev/null
kv_eq "after plain HTTP on the TLS port, TLS still serves" 200 "$(kv_curl "$R" "$S/health")"
metrics
kv_ge "kvgate_tls_handshakes_total counts the handshakes" $(($(kv_metric kvgate_tls_handshakes_total "$KV_TMP/m") - hs0)) 10
kv_ge "kvgate_tls_handshake_failures_total counts TLS 1.1 and plain HTTP" \
	$(($(kv_metric kvgate_tls_handshake_failures_total "$KV_TMP/m") - hf0)) 2

# ---- SIGHUP: new certificate for new connections, the open connection keeps working ----
mkdir -p "$KV_TMP/certs2"
kv_certs "$KV_TMP/certs2"
old=$(openssl x509 -in "$KV_TMP/certs/server.crt" -noout -serial | sed 's/^serial=0*//')
new=$(openssl x509 -in "$KV_TMP/certs2/server.crt" -noout -serial | sed 's/^serial=0*//')
swap="cp '$KV_TMP/certs2/server.key' '$KV_TMP/certs/server.key.new' && cp '$KV_TMP/certs2/server.crt' '$KV_TMP/certs/server.crt.new' && mv '$KV_TMP/certs/server.key.new' '$KV_TMP/certs/server.key' && mv '$KV_TMP/certs/server.crt.new' '$KV_TMP/certs/server.crt' && kill -HUP $KVGATE_PID"
out=$(node "$KV_JS/tls_reload.mjs" "$T" "$swap" 2>&1)
kv_eq "before SIGHUP: the old certificate" "$old" "$(printf '%s' "$out" | kv_json /dev/stdin 'j.old_serial')"
kv_eq "after SIGHUP: a new connection sees the new certificate" "$new" \
	"$(printf '%s' "$out" | kv_json /dev/stdin 'j.new_serial')"
kv_eq "after SIGHUP: the open connection still works" "200 200 true 200" \
	"$(printf '%s' "$out" | kv_json /dev/stdin '[j.old_status1, j.new_status, j.old_alive, j.old_status2].join(" ")')"
kv_eq "curl verifying against the new CA" 200 "$(curl -sS --max-time 10 --cacert "$KV_TMP/certs2/ca.crt" \
	-o /dev/null -w '%{http_code}' "$S/health")"
kill -0 "$KVGATE_PID" 2>/dev/null || kv_fail "kvgate died"
kv_done
