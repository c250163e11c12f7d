#!/bin/sh
set -eu
: "${BUILD:=build}"
for f in "$@"; do
	case "$f" in
	*.c|*.h) echo "C: $f" ;;
	*) printf '%s\n' "skip $f" >&2 ;;
	esac
done
n=$(find . -name '*.c' | wc -l)
[ "$n" -gt 0 ] && echo "found $n files" || exit 1
awk -F: '$3 >= 1000 { print $1 }' /etc/passwd | sort -u | head -n 5
curl -sS -H "Authorization: Bearer $KEY" -d '{"prompt":"hi"}' http://127.0.0.1:8443/v1/completions | jq .
