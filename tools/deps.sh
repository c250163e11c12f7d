#!/bin/sh
# Installs what a fresh Debian 12 or Ubuntu 24.04 lacks to build, run and test kvgate.
# Usage: tools/deps.sh [test|bench]   ("test" also installs clang and the Node packages the tests
# drive; "bench" also wrk and nginx, which make bench-proxy measures against)
# Quiet and quick when everything is already there: it asks dpkg first, apt-get only for what is missing.
set -e
PKGS="build-essential pkg-config libevent-dev libssl-dev libcjson-dev check node-llhttp
      libonig-dev libutf8proc-dev libxxhash-dev openssl curl"
[ "$1" = bench ] && PKGS="$PKGS wrk nginx" && set -- test
[ "$1" = test ] && PKGS="$PKGS nodejs npm clang"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# nodejs may come from elsewhere (nodesource, nvm): a working node and npm are enough.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
	missing=$(echo "$missing" | sed 's/ nodejs//; s/ npm//')
fi
if [ -n "$(echo $missing)" ]; then
	echo "deps: installing$missing"
	SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -q >/dev/null || true
	$SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
# libFuzzer's runtime comes with clang's compiler-rt package, named by clang's major version
# (libclang-rt-14-dev on Debian 12, libclang-rt-18-dev on Ubuntu 24.04).
if [ "$1" = test ] && command -v clang >/dev/null 2>&1; then
	v=$(clang -dumpversion | cut -d. -f1)
	if ! dpkg-query -W -f='${Status}' "libclang-rt-$v-dev" 2>/dev/null | grep -q "ok installed" &&
	   apt-cache show "libclang-rt-$v-dev" >/dev/null 2>&1; then
		echo "deps: installing libclang-rt-$v-dev (libFuzzer)"
		SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "libclang-rt-$v-dev" >/dev/null
	fi
fi
if [ "$1" = test ] && [ ! -f tests/js/node_modules/.deps-ok ]; then
	echo "deps: installing Node test packages into tests/js"
	(cd tests/js && npm install --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null \
		&& touch node_modules/.deps-ok)
fi
exit 0
