#!/usr/bin/env bash
# Firewall benchmark: apply time and tool invocations for 10 / 1,000 /
# 10,000 allowlist entries, zguard (iptables-restore + ipset swap) against
# the usual one-rule-per-CIDR with go-iptables Append; a no-op reconcile
# (goal: zero writes, < 50 ms); per-packet cost of a long rule list against
# one ipset rule; revocation latency. Runs in throwaway network namespaces
# (root, iptables, ipset, iproute2), so the host's rules are not touched.
# Bounded: the go-iptables anchor stops after ZGUARD_BENCH_ANCHOR_BUDGET
# (default 90s) per row and extrapolates; the whole run takes 3-5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "== zguard firewall benchmark =="
if ! ZGUARD_BENCH=1 timeout 900 go test -count=1 -timeout 880s \
	-run '^TestBenchFirewall$' -v ./firewall/ >"$out" 2>&1; then
	cat "$out"
	exit 1
fi
# The test prints its tables on stdout; drop go test's own lines and logs.
grep -v -E '^(=== |--- |PASS$|ok |\s+\S+\.go:[0-9]+:|\s+$)' "$out" || true
grep -E '^(ok|FAIL)' "$out"
