#!/usr/bin/env bash
# GPU watchdog benchmark: simulated memory ramps (1, 10, 50 GB/s on 80 GB
# and 141 GB devices) against a fixed 1s, fixed-threshold poller
# (earlyoom-style), reaction latency of the real loop, and idle CPU of the
# real loop through the fake libnvidia-ml (real cgo/dlopen path).
# Bounded: about one minute. Needs gcc (cgo); no GPU, no root.
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_CFLAGS="${CGO_CFLAGS:--Wno-deprecated-declarations}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "== zguard GPU watchdog benchmark (no GPU: simulation + mock/fake NVML) =="
if ! ZGUARD_GPU_BENCH=1 timeout 300 go test -count=1 -timeout 280s \
	-run '^(TestRampSimulation|TestGPUBenchRealLoop)$' -v ./gpu/ >"$out" 2>&1; then
	cat "$out"
	exit 1
fi
# Print the tables the tests logged, without go test's prefixes.
sed -n -e '/bench_test.go:[0-9]*: *$/,/^--- /p' "$out" | grep -v -e 'bench_test.go:[0-9]*: *$' -e '^--- ' -e '^=== ' | sed 's/^        //'
grep -E '^(ok|FAIL)' "$out"
