#!/bin/sh
# run.sh BUILD SECONDS: runs every libFuzzer target of BUILD/fuzz for SECONDS each, from the
# committed seeds (tests/fuzz/corpus/NAME) plus what earlier runs found (BUILD/fuzz/corpus/NAME).
# Exit 1 if any target crashes, leaks or trips a sanitizer; the reproducer is left in BUILD/fuzz.
set -u
B=${1:?usage: run.sh BUILD SECONDS}
S=${2:-60}
fail=0
for t in "$B"/fuzz/fuzz_*; do
	[ -x "$t" ] || continue
	n=$(basename "$t")
	mkdir -p "$B/fuzz/corpus/$n" "tests/fuzz/corpus/$n"
	printf 'fuzz %-18s %4ss ... ' "$n" "$S"
	if "$t" -max_total_time="$S" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
		-artifact_prefix="$B/fuzz/$n-" "$B/fuzz/corpus/$n" "tests/fuzz/corpus/$n" \
		>"$B/fuzz/$n.log" 2>&1; then
		echo "ok ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "$B/fuzz/$n.log" | grep -o '[0-9]*$') runs)"
	else
		echo "FAILED: see $B/fuzz/$n.log"
		tail -n 30 "$B/fuzz/$n.log"
		fail=1
	fi
done
exit $fail
