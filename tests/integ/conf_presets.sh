# conf_presets.sh: the files of conf/ that are not kvgate.conf. The engine presets
# (conf/engine/*.yaml) expand to the flags they document and a served engine takes them, with an
# explicit flag overriding the preset; a malformed preset is refused with file:line;
# conf/jetson-thor.conf passes `kvgate --check` (model paths pointed at the bundled model); the
# Grafana dashboard is JSON whose every metric exists in kvgate's or the engine's /metrics code;
# docker/compose.yaml validates when a compose client is installed.
. "$(dirname "$0")/lib.sh"

ENGINE=$KV_BUILD/bin/kvgate-engine
MODEL=models/kvgate-tiny-coder
T=$KV_TMP
[ -x "$ENGINE" ] || kv_die "no $ENGINE"
args() { KVGATE_ENGINE_PRINT_ARGS=1 "$ENGINE" serve "$MODEL" "$@"; }

# ---- each preset: the flags its comment promises ----
kv_eq "balanced" "serve --dtype bfloat16 --kv-cache-dtype fp8 --max-model-len 4096 --max-num-seqs 4 --gpu-memory-utilization 0.9 $MODEL" \
	"$(args --config conf/engine/balanced.yaml)"
kv_eq "max-throughput" "serve --dtype bfloat16 --kv-cache-dtype fp8 --max-model-len 2048 --max-num-seqs 8 --gpu-memory-utilization 0.95 $MODEL" \
	"$(args --config conf/engine/max-throughput.yaml)"
kv_eq "long-context" "serve --dtype bfloat16 --kv-cache-dtype fp8 --max-model-len 8192 --max-num-seqs 2 --gpu-memory-utilization 0.9 $MODEL" \
	"$(args --config conf/engine/long-context.yaml)"
kv_eq "max-saving" "serve --dtype bfloat16 --kv-cache-dtype int8 --max-model-len 2048 --max-num-seqs 4 --gpu-memory-utilization 0.9 --enable-prefix-caching $MODEL" \
	"$(args --config conf/engine/max-saving.yaml)"
kv_eq "command-line flags come after the preset's" \
	"serve --dtype bfloat16 --kv-cache-dtype int8 --max-model-len 2048 --max-num-seqs 4 --gpu-memory-utilization 0.9 --enable-prefix-caching $MODEL --max-model-len 1024" \
	"$(args --config=conf/engine/max-saving.yaml --max-model-len 1024)"

# ---- a served engine takes a preset; the explicit flag wins ----
for preset in long-context:8192:fp8 max-saving:2048:int8; do
	name=${preset%%:*} len=$(echo "$preset" | cut -d: -f2) dt=${preset##*:}
	kv_port P
	kv_bg "engine-$name" "$ENGINE" serve "$MODEL" --config "conf/engine/$name.yaml" --host 127.0.0.1 --port "$P" \
		--threads 1 --kv-cache-memory 16M
	kv_wait_port "$P" "$KV_BG_PID" 20000
	curl -s "http://127.0.0.1:$P/v1/models" >"$T/models"
	kv_eq "$name: /v1/models max_model_len" "$len" "$(kv_jval "$T/models" 'j.data[0].max_model_len')"
	curl -s "http://127.0.0.1:$P/metrics" >"$T/metrics"
	kv_file_has "$name: cache_dtype $dt" "^vllm:cache_config_info\{.*cache_dtype=\"$dt\"" "$T/metrics"
	kill "$KV_BG_PID"
done
kv_port P
kv_bg engine-override "$ENGINE" serve "$MODEL" --config conf/engine/long-context.yaml --max-model-len 1024 \
	--kv-cache-dtype int8 --host 127.0.0.1 --port "$P" --threads 1 --kv-cache-memory 16M
kv_wait_port "$P" "$KV_BG_PID" 20000
curl -s "http://127.0.0.1:$P/v1/models" >"$T/models"
kv_eq "override: max_model_len" 1024 "$(kv_jval "$T/models" 'j.data[0].max_model_len')"
curl -s "http://127.0.0.1:$P/metrics" >"$T/metrics"
kv_file_has "override: cache_dtype int8" '^vllm:cache_config_info\{.*cache_dtype="int8"' "$T/metrics"
kill "$KV_BG_PID"

# ---- refusals ----
printf 'dtype: bfloat16\n\n  max-model-len: 2048\n' >"$T/indented.yaml"
"$ENGINE" serve "$MODEL" --config "$T/indented.yaml" >"$T/out" 2>&1
kv_eq "indented line: exit 2" 2 $?
kv_file_has "indented line: file:line" "indented.yaml:3: expected" "$T/out"
printf 'max-modle-len: 2048\n' >"$T/typo.yaml"
"$ENGINE" serve "$MODEL" --config "$T/typo.yaml" >"$T/out" 2>&1
kv_eq "unknown flag: exit 2" 2 $?
kv_file_has "unknown flag named" "unknown flag '--max-modle-len'" "$T/out"
printf 'max-model-len:\n' >"$T/empty.yaml"
"$ENGINE" serve "$MODEL" --config "$T/empty.yaml" >"$T/out" 2>&1
kv_eq "key without value: exit 2" 2 $?
"$ENGINE" serve "$MODEL" --config "$T/none.yaml" >"$T/out" 2>&1
kv_eq "missing file: exit 2" 2 $?
kv_file_has "missing file named" "none.yaml: No such file" "$T/out"

# ---- conf/jetson-thor.conf: valid once its model and certificate paths exist ----
kv_certs "$KV_TMP/certs"
sed -e "s|/models/DeepSeek-Coder-V2-Lite-Instruct|$KV_ROOT/$MODEL|; s|/etc/kvgate/certs|$KV_TMP/certs|g" \
	conf/jetson-thor.conf >"$T/jetson.conf"
"$KVGATE" --check -c "$T/jetson.conf" >"$T/out" 2>&1
kv_eq "jetson-thor.conf: kvgate --check" 0 $?

# ---- conf/grafana-dashboard.json ----
node -e '
const fs = require("fs");
const d = JSON.parse(fs.readFileSync("conf/grafana-dashboard.json", "utf8"));
const src = fs.readFileSync("proxy/pxmetrics.c", "utf8") + fs.readFileSync("engine/server.c", "utf8");
const bad = [], ids = new Set(), cells = new Set();
for (const p of d.panels) {
	if (ids.has(p.id)) bad.push("duplicate id " + p.id);
	ids.add(p.id);
	const g = p.gridPos;
	if (g.x + g.w > 24) bad.push(p.title + ": wider than the grid");
	for (let x = g.x; x < g.x + g.w; x++)
		for (let y = g.y; y < g.y + g.h; y++) {
			if (cells.has(x + "," + y)) bad.push(p.title + ": overlaps another panel");
			cells.add(x + "," + y);
		}
	for (const t of p.targets || [])
		for (const m of t.expr.match(/(?<![$\w])(kvgate_[a-z0-9_]+|vllm:[a-z0-9_]+)/g) || []) {
			const name = m.replace(/_bucket$/, "");
			if (!src.includes("\"" + name + "\"")) bad.push(p.title + ": no metric " + name);
		}
}
const want = ["kvgate_requests_total", "kvgate_upstream_ttfb_seconds", "vllm:time_to_first_token_seconds",
	"vllm:generation_tokens_total", "vllm:kv_cache_usage_perc", "kvgate_user_rejections_total",
	"kvgate_route_decisions_total"];
const all = JSON.stringify(d);
for (const w of want) if (!all.includes(w)) bad.push("nothing shows " + w);
if (bad.length) { console.log(bad.join("\n")); process.exit(1); }
' >"$T/dash" 2>&1
kv_eq "grafana-dashboard.json: JSON, known metrics, layout" 0 $?
cat "$T/dash"

# ---- docker/compose.yaml (a compose client is not always installed) ----
if docker compose version >/dev/null 2>&1; then
	docker compose -f docker/compose.yaml config -q >"$T/out" 2>&1
	kv_eq "docker compose config" 0 $?
elif command -v docker-compose >/dev/null 2>&1; then
	docker-compose -f docker/compose.yaml config -q >"$T/out" 2>&1
	kv_eq "docker-compose config" 0 $?
else
	echo "skip $KV_NAME: no docker compose client here"
fi
kv_done
