#!/bin/sh
# `make run`: serve on https://127.0.0.1:8443 with conf/kvgate.conf.
# Until the engine serves (issue 5), the upstream is the test engine of tests/ (build/tests/kvup on
# 127.0.0.1:8000), which answers like an OpenAI engine with placeholder text.
set -e
B=${1:-build}
sh tools/mkcert.sh "$B/certs" >/dev/null
"$B/tests/kvup" --port 8000 --name kvup-test-model >"$B/kvup.log" 2>&1 &
UP=$!
trap 'kill $UP 2>/dev/null' EXIT INT TERM
cat <<MSG
kvgate: serving https://127.0.0.1:8443 in front of the test upstream (build/tests/kvup on :8000).
Try, from another terminal:
  curl --cacert $B/certs/ca.crt https://127.0.0.1:8443/v1/chat/completions \\
       -H 'content-type: application/json' \\
       -d '{"model":"kvup-test-model","messages":[{"role":"user","content":"hi"}],"stream":true}'
Ctrl-C stops it.
MSG
"$B/bin/kvgate" -c conf/kvgate.conf
