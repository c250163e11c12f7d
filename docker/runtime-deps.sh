#!/bin/sh
# runtime-deps.sh BINARY...: the Debian/Ubuntu packages that hold the shared libraries the binaries
# load, one per line; the image's build stage writes them to a file and its runtime stage installs
# exactly those, so the runtime stage never guesses package names (they differ between releases:
# libssl3 / libssl3t64, libutf8proc2 / libutf8proc3, ...). Left out: the C runtime (libc6, libgcc-s1,
# libstdc++6: in every base image) and the CUDA libraries (/usr/local/cuda: in the CUDA runtime image).
set -e
[ $# -gt 0 ] || { echo "usage: runtime-deps.sh BINARY..." >&2; exit 2; }
for b in "$@"; do ldd "$b" >/dev/null || { echo "runtime-deps: ldd $b failed" >&2; exit 1; }; done
libs=$(for b in "$@"; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u)
pkgs=""
for lib in $libs; do
	case $lib in /usr/local/cuda*) continue ;; esac
	real=$(realpath "$lib")
	pkg=""
	# dpkg records a library under /usr/lib or /lib, depending on the release (merged /usr)
	for p in "$lib" "$real" "/usr$lib" "/usr$real" "${lib#/usr}" "${real#/usr}"; do
		pkg=$(dpkg -S "$p" 2>/dev/null | head -n 1 | cut -d: -f1) && [ -n "$pkg" ] && break
	done
	case $pkg in
	"") case $lib in */libcudart*|*/libcublas*|*/libcuda.*) continue ;; esac
	    echo "runtime-deps: no package holds $lib" >&2; exit 1 ;;
	libc6|libgcc-s1|libstdc++6|cuda-*|libcublas*) ;;
	*) pkgs="$pkgs $pkg" ;;
	esac
done
# shellcheck disable=SC2086 # one word per package, split on purpose
printf '%s\n' $pkgs | sort -u
