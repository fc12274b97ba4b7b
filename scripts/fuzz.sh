#!/usr/bin/env bash
# Runs every fuzz target in the module for the given time each.
set -euo pipefail
t=${1:-30s}
export CGO_CFLAGS=-Wno-deprecated-declarations
for pkg in $(go list ./...); do
	for f in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
		echo "== $pkg $f ($t)"
		go test -run XXX -fuzz "^$f\$" -fuzztime "$t" -fuzzminimizetime 100x "$pkg"
	done
done
