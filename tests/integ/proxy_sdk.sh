#!/bin/sh
# proxy_sdk.sh: the openai npm SDK (tests/js/node_modules) through kvgate over TLS, trusting the
# local CA through NODE_EXTRA_CA_CERTS as Node clients do (tests/js/sdk_proxy.mjs has the cases).
. "$(dirname "$0")/lib.sh"

[ -x "$KVGATE" ] || kv_die "no $KVGATE: kvgate is not built"
[ -d "$KV_JS/node_modules/openai" ] || kv_die "no tests/js/node_modules/openai: run tools/deps.sh test"
kv_start_kvup UP up1
kv_port T
C=$KV_TMP/kvgate.conf
kv_conf "$C" "$T" "" "$UP"
kv_start_kvgate "$C" "$T"

KV_BASE_URL=https://127.0.0.1:$T/v1 KV_UP_STATS=http://127.0.0.1:$UP/kvup/stats \
	NODE_EXTRA_CA_CERTS=$KV_TMP/certs/ca.crt timeout 60 node "$KV_JS/sdk_proxy.mjs" >"$KV_TMP/sdk.out" 2>&1
rc=$?
sed "s/^ok   sdk:/ok   $KV_NAME:/; s/^FAIL sdk:/FAIL $KV_NAME:/" "$KV_TMP/sdk.out"
KV_OKS=$(grep -c '^ok ' "$KV_TMP/sdk.out")
KV_FAILS=$(grep -c '^FAIL ' "$KV_TMP/sdk.out")
[ "$rc" -eq 0 ] || [ "$KV_FAILS" -gt 0 ] || kv_fail "sdk_proxy.mjs exited $rc: $(tail -n 5 "$KV_TMP/sdk.out")"
kv_eq "the SDK ran every case" 10 $((KV_OKS + KV_FAILS))
kv_done
