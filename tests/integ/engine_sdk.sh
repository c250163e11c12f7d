# engine_sdk.sh: the openai npm SDK (tests/js/node_modules), unchanged, against kvgate-engine serve
# on 127.0.0.1 (cases in tests/js/engine_sdk.mjs).
. "$(dirname "$0")/lib.sh"

ENGINE=$KV_BUILD/bin/kvgate-engine
[ -x "$ENGINE" ] || kv_die "no $ENGINE"
[ -d "$KV_JS/node_modules/openai" ] || kv_die "no tests/js/node_modules/openai: run tools/deps.sh test"
kv_port P
kv_bg engine "$ENGINE" serve tests/data/engine_tiny --host 127.0.0.1 --port "$P" --served-model-name tiny --threads 1
kv_wait_port "$P" "$KV_BG_PID" 10000

KV_BASE_URL=http://127.0.0.1:$P/v1 timeout 90 node "$KV_JS/engine_sdk.mjs" >"$KV_TMP/sdk.out" 2>&1
rc=$?
sed "s/^ok   sdk:/ok   $KV_NAME:/; s/^FAIL sdk:/FAIL $KV_NAME:/" "$KV_TMP/sdk.out"
KV_OKS=$(grep -c '^ok ' "$KV_TMP/sdk.out")
KV_FAILS=$(grep -c '^FAIL ' "$KV_TMP/sdk.out")
[ "$rc" -eq 0 ] || [ "$KV_FAILS" -gt 0 ] || kv_fail "engine_sdk.mjs exited $rc: $(tail -n 5 "$KV_TMP/sdk.out")"
kv_eq "the SDK ran every case" 9 $((KV_OKS + KV_FAILS))
kv_done
