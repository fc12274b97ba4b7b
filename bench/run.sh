#!/usr/bin/env bash
# Runs every benchmark script in this folder, one after another, and keeps
# their tables in bench/out/. Each script prints its figures side by side
# with the anchor it is measured against.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
status=0
for s in bench/*.sh; do
	[ "$(basename "$s")" = run.sh ] && continue
	name=$(basename "$s" .sh)
	echo "=================== $name ==================="
	if ! "$s" 2>&1 | tee "bench/out/$name.txt"; then
		echo "bench $name FAILED" >&2
		status=1
	fi
done
exit $status
