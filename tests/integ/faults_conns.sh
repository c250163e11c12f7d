#!/bin/sh
# faults_conns.sh (issue 9 item 3): many and hostile connections.
#   - 10,000 idle connections under a cap above them: all held, kvgate keeps serving, its RSS per
#     held connection is printed and bounded; all released when the clients go.
#   - 10,000 idle connections under max_connections 5000: kvgate never holds more than the cap (+64
#     that get a 503 if they speak), refuses the rest by closing them, serves again once they go.
#   - a file-descriptor limit below max_connections: accept() failing with EMFILE must not make the
#     event loop spin, and kvgate serves again once descriptors free up.
#   - TLS clients that stall mid-handshake (a partial ClientHello; a whole ClientHello and then
#     silence; a ClientHello dripped one byte every 50 ms): closed by header_timeout_ms, and kvgate
#     keeps serving meanwhile; a TLS client stalling mid-headers after the handshake too.
#   - SIGHUP under load: a client loop (keep-alive and new TLS connections, stream and not) runs
#     through five reloads (new certificate each time, access log rotated by rename): every
#     response is a 200, and every request has its access-log line in one of the files.
. "$(dirname "$0")/lib.sh"

[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"
N=10000
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
lim=$(ulimit -n)
if [ "$lim" != unlimited ] && [ "$lim" -lt $((N + 500)) ]; then
	N=$((lim - 500))
	echo "note: ulimit -n is $lim: $N idle connections instead of 10000"
fi
kv_start_kvup UP up1
R=$KV_TMP/r
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
nfd() { ls "/proc/$1/fd" | wc -l | tr -d ' '; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
line_of() { sed -n "s/^$1 //p" "$KV_TMP/$2.log"; }   # line_of ready|done LOGNAME: the json

# ---- 10,000 idle connections, cap 12000 ----
kv_port PI
kv_conf "$KV_TMP/i.conf" "" "$PI" "$UP" '"max_connections": 12000, "header_timeout_ms": 30000, "idle_timeout_ms": 30000,'
kv_start_kvgate "$KV_TMP/i.conf" "$PI"
GI=$KVGATE_PID
I=http://127.0.0.1:$PI
kv_curl "$R" "$I/v1/models" >/dev/null
rss0=$(rss_kb "$GI")
kv_bg idle1 node "$KV_JS/conns.mjs" idle "$PI" "$N" 2500
IDLE=$KV_BG_PID
kv_wait_for "idle connections opened" 30000 grep -q '^ready' "$KV_TMP/idle1.log" || kv_die "idle connections: $(cat "$KV_TMP/idle1.log")"
rss1=$(rss_kb "$GI")
kv_eq "$N idle connections: all opened, none closed" "$N 0 0" \
	"$(line_of ready idle1 | kv_json /dev/stdin '[j.opened, j.failed, j.closed].join(" ")')"
kv_ge "  kvgate holds them (open descriptors)" "$(nfd "$GI")" "$N"
t0=$(kv_now)
kv_eq "  a new client is served meanwhile" 200 "$(kv_curl "$R" "$I/v1/chat/completions" -d '{"model":"m"}')"
kv_le "  promptly (ms)" $(($(kv_now) - t0)) 1000
curl -s --max-time 5 "$I/metrics" >"$KV_TMP/m"
kv_ge "  kvgate_connections_open counts them" "$(kv_metric kvgate_connections_open "$KV_TMP/m")" "$N"
per=$(((rss1 - rss0) * 1024 / N))
echo "   RSS of kvgate: $((rss0 / 1024)) MB before, $((rss1 / 1024)) MB with $N idle connections ($per bytes each)"
# A held idle connection is a struct px_conn, a bufferevent with its two evbuffers, an llhttp
# parser and an event timer: a few KB at most. 16 KB each would mean a per-connection buffer
# allocated before any byte arrived (10,000 x 16 KB = 160 MB on a loaded edge).
kv_le "  kvgate's memory per idle connection (bytes)" "$per" 16384
kv_wait_for "idle connections released" 10000 grep -q '^done' "$KV_TMP/idle1.log"
kv_eq "  none closed by kvgate within the hold" 0 "$(line_of done idle1 | kv_json /dev/stdin j.closed)"
few() { [ "$(nfd "$GI")" -lt 100 ]; }
kv_wait_for "kvgate lets go of the connections" 5000 few || kv_fail "kvgate still holds $(nfd "$GI") descriptors"
kv_eq "  serves after they go" 200 "$(kv_curl "$R" "$I/v1/chat/completions" -d '{"model":"m"}')"
echo "   RSS of kvgate after they went: $(($(rss_kb "$GI") / 1024)) MB"
wait "$IDLE" 2>/dev/null
kv_forget "$IDLE"
kill "$GI"

# ---- 10,000 idle connections, cap 5000 ----
kv_port PJ
kv_conf "$KV_TMP/j.conf" "" "$PJ" "$UP" '"max_connections": 5000, "header_timeout_ms": 30000, "idle_timeout_ms": 30000,'
kv_start_kvgate "$KV_TMP/j.conf" "$PJ"
GJ=$KVGATE_PID
kv_bg idle2 node "$KV_JS/conns.mjs" idle "$PJ" "$N" 1000
IDLE=$KV_BG_PID
kv_wait_for "idle connections opened (cap 5000)" 30000 grep -q '^ready' "$KV_TMP/idle2.log" || kv_die "idle connections: $(cat "$KV_TMP/idle2.log")"
fds=$(nfd "$GJ")
kv_le "cap 5000: kvgate's descriptors while $N try (cap + 64 + listeners and the rest)" "$fds" 5100
kv_le "  clients still connected after the rush" "$(line_of ready idle2 | kv_json /dev/stdin j.open)" 5064
kv_ge "  the others were closed by kvgate (refused)" "$(line_of ready idle2 | kv_json /dev/stdin 'j.closed + j.failed')" $((N - 5064))
kill -0 "$GJ" 2>/dev/null || kv_fail "kvgate died under the rush"
kv_wait_for "idle connections released (cap 5000)" 10000 grep -q '^done' "$KV_TMP/idle2.log"
wait "$IDLE" 2>/dev/null
kv_forget "$IDLE"
served() { [ "$(KV_CURL_MAX=2 kv_curl "$R" "http://127.0.0.1:$PJ/v1/models")" = 200 ]; }
if kv_wait_for "served after the rush" 5000 served; then kv_ok "  serves again once they go"
else kv_fail "cap 5000: not serving 5 s after the clients left"; fi
kill "$GJ"

# ---- descriptors run out before max_connections: EMFILE must not spin the loop ----
kv_port PK
kv_conf "$KV_TMP/k.conf" "" "$PK" "$UP" '"max_connections": 4096, "header_timeout_ms": 30000,'
kv_bg kvgate-emfile sh -c "ulimit -n 256 && exec '$KVGATE' -c '$KV_TMP/k.conf'"
GK=$KV_BG_PID
kv_wait_port "$PK" "$GK"
kv_bg idle3 node "$KV_JS/conns.mjs" idle "$PK" 600 2000
IDLE=$KV_BG_PID
kv_wait_for "idle connections opened (ulimit 256)" 30000 grep -q '^ready' "$KV_TMP/idle3.log" || kv_die "idle connections: $(cat "$KV_TMP/idle3.log")"
c0=$(cpu_ticks "$GK")
sleep 1
c1=$(cpu_ticks "$GK")
kv_le "ulimit -n 256, 600 connections: kvgate's CPU while saturated (ticks of 10 ms in 1 s)" $((c1 - c0)) 20
kill -0 "$GK" 2>/dev/null || kv_fail "kvgate died when descriptors ran out"
kv_le "  the failed accepts do not flood kvgate's log (lines)" "$(wc -l <"$KV_TMP/kvgate-emfile.log" | tr -d ' ')" 10
kv_wait_for "idle connections released (ulimit)" 10000 grep -q '^done' "$KV_TMP/idle3.log"
wait "$IDLE" 2>/dev/null
kv_forget "$IDLE"
servedk() { [ "$(KV_CURL_MAX=2 kv_curl "$R" "http://127.0.0.1:$PK/v1/models")" = 200 ]; }
if kv_wait_for "served after EMFILE" 5000 servedk; then kv_ok "  serves again once descriptors free up"
else kv_fail "EMFILE: not serving 5 s after the clients left"; fi
kill "$GK"

# ---- TLS handshakes that stall: closed at header_timeout_ms (800) ----
kv_port T
kv_port PT
kv_conf "$KV_TMP/t.conf" "$T" "$PT" "$UP" '"header_timeout_ms": 800,'
kv_start_kvgate "$KV_TMP/t.conf" "$T" "$PT"
GT=$KVGATE_PID
S=https://127.0.0.1:$T
kv_bg st-partial node "$KV_JS/conns.mjs" tlsstall "$T" partial 20
P1=$KV_BG_PID
kv_bg st-hello node "$KV_JS/conns.mjs" tlsstall "$T" hello 20
P2=$KV_BG_PID
kv_bg st-drip node "$KV_JS/conns.mjs" tlsstall "$T" drip 5
P3=$KV_BG_PID
sleep 0.3
t0=$(kv_now)
kv_eq "TLS stalls in progress: a real TLS client is served" 200 "$(kv_curl "$R" "$S/v1/chat/completions" -d '{"model":"m"}')"
kv_le "  promptly (ms)" $(($(kv_now) - t0)) 1000
for p in $P1 $P2 $P3; do wait "$p"; kv_forget "$p"; done
for m in partial hello drip; do
	j=$(cat "$KV_TMP/st-$m.log")
	n=$(printf '%s' "$j" | kv_json /dev/stdin j.n)
	kv_eq "TLS $m ClientHello: every stalled connection closed by kvgate" "$n" "$(printf '%s' "$j" | kv_json /dev/stdin j.closed)"
	kv_ge "  not before header_timeout_ms (ms)" "$(printf '%s' "$j" | kv_json /dev/stdin j.min_ms)" 700
	kv_le "  soon after it (ms)" "$(printf '%s' "$j" | kv_json /dev/stdin j.max_ms)" 2500
done
kv_ge "  a whole ClientHello got the server's flight (the stall is mid-handshake)" \
	"$(kv_json "$KV_TMP/st-hello.log" j.server_bytes)" 100
if kv_raw --tls "$T" 'send:GET /v1/models HTTP/1.1\r\nHo' 'open:500' 'closed:2500'; then
	kv_ok "TLS: headers stalled after the handshake are closed at header_timeout_ms too"
else kv_fail "TLS header stall: $(cat "$KV_TMP/raw.err")"; fi
kv_eq "kvgate serves TLS after the stalls" 200 "$(kv_curl "$R" "$S/health")"

# ---- SIGHUP under load: no dropped request, no lost access-log line ----
mkdir -p "$KV_TMP/certs2"
kv_certs "$KV_TMP/certs2"
cp "$KV_TMP/certs/ca.crt" "$KV_TMP/ca-both.crt"
cat "$KV_TMP/certs2/ca.crt" >>"$KV_TMP/ca-both.crt"
logged0=$(grep -c 'path="/v1/chat/completions".*status=200' "$KV_TMP/access.log")
kv_bg loop node "$KV_JS/loop.mjs" "$S" "$KV_TMP/ca-both.crt" 3500 8
LOOP=$KV_BG_PID
sleep 0.4
for i in 1 2 3 4 5; do
	src=$KV_TMP/certs2
	[ $((i % 2)) -eq 0 ] && src=$KV_TMP/certs-orig
	[ -d "$KV_TMP/certs-orig" ] || { mkdir -p "$KV_TMP/certs-orig"; cp "$KV_TMP/certs/server.crt" "$KV_TMP/certs/server.key" "$KV_TMP/certs-orig/"; }
	cp "$src/server.key" "$KV_TMP/certs/server.key.new" && cp "$src/server.crt" "$KV_TMP/certs/server.crt.new" &&
		mv "$KV_TMP/certs/server.key.new" "$KV_TMP/certs/server.key" && mv "$KV_TMP/certs/server.crt.new" "$KV_TMP/certs/server.crt"
	mv "$KV_TMP/access.log" "$KV_TMP/access.log.$i"
	kill -HUP "$GT"
	sleep 0.5
done
wait "$LOOP"
kv_forget "$LOOP"
res=$(cat "$KV_TMP/loop.log")
echo "   load through 5 reloads: $res"
kv_ge "SIGHUP under load: requests sent" "$(printf '%s' "$res" | kv_json /dev/stdin j.requests)" 50
kv_eq "  every one answered 200 whole" "{}" "$(printf '%s' "$res" | kv_json /dev/stdin 'JSON.stringify(j.bad)')"
sleep 0.2
logged=$(cat "$KV_TMP"/access.log* | grep -c 'path="/v1/chat/completions".*status=200')
kv_eq "  each has its access-log line across the rotated files" "$(printf '%s' "$res" | kv_json /dev/stdin j.requests)" $((logged - logged0))
kv_ge "  lines went to the reopened file too" "$(grep -c . "$KV_TMP/access.log.5" 2>/dev/null || echo 0)" 1
kv_eq "  after the reloads a client trusting only the new CA is served" 200 \
	"$(curl -sS --max-time 5 --cacert "$KV_TMP/certs2/ca.crt" -o /dev/null -w '%{http_code}' "$S/health")"
kill -0 "$GT" 2>/dev/null || kv_fail "kvgate died"
kv_done
