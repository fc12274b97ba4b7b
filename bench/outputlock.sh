#!/usr/bin/env bash
# Output lock benchmark: lock a tree of N files with mixed modes and owners
# (first pass), then again (no-op pass), and do the same with the usual
# advice, `chown -R` + `chmod -R`, on an identical tree. Counts writes and
# system calls (the lock's own counters; strace -c for the coreutils), and
# the lock's peak memory at 10,000 and at N files (it must not grow).
#
# Needs root (to make files of other owners). Usage: bench/outputlock.sh [N]
set -euo pipefail

N=${1:-100000}
SMALL=10000
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
	echo "outputlock bench: needs root (skipped)" >&2
	exit 0
fi

WORK=$(mktemp -d /tmp/zguard-bench-outputlock.XXXXXX)
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

go build -o "$WORK/lockpass" ./outputlock/internal/lockpass
LP=$WORK/lockpass
have_strace=0
command -v strace >/dev/null && have_strace=1

# field KEY LINE: the value of KEY=... in a lockpass output line.
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }

# secs CMD...: wall seconds of a command, to the millisecond.
secs() {
	local s e
	s=$(date +%s.%N)
	"$@"
	e=$(date +%s.%N)
	awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }'
}

# straced CMD...: "total_calls chmod_chown_calls" of a command (strace -c).
straced() {
	if [[ $have_strace -eq 0 ]]; then
		echo "- -"
		return
	fi
	strace -f -c -o "$WORK/strace.txt" "$@" >/dev/null
	awk '/^-/ { next } $NF ~ /^(fchmodat|fchmodat2|fchownat|fchown|fchmod|chmod|chown|lchown)$/ { w += $4 }
		$NF == "total" { t = $4 } END { printf "%d %d\n", t, w }' "$WORK/strace.txt"
}

echo "building trees ($N and $SMALL files, mixed modes 0644/0666/0600/0755/0640, owners 1000/65534/0) ..." >&2
"$LP" -make "$N" -path "$WORK/lock"
"$LP" -make "$N" -path "$WORK/coreutils"
"$LP" -make "$SMALL" -path "$WORK/small"
sync

first=$("$LP" -path "$WORK/lock")
noop=$("$LP" -path "$WORK/lock")
small=$("$LP" -path "$WORK/small")
read -r lp_calls lp_writes < <(straced "$LP" -path "$WORK/lock")

cu_chown1=$(secs chown -R 0:0 "$WORK/coreutils")
cu_chmod1=$(secs chmod -R u=rwX,go= "$WORK/coreutils")
cu_chown2=$(secs chown -R 0:0 "$WORK/coreutils")
cu_chmod2=$(secs chmod -R u=rwX,go= "$WORK/coreutils")
# Counted on the tree already locked: coreutils calls fchownat/fchmodat on
# every entry whether it changes or not, so the first run makes the same
# calls (a full run with a third tree measured identical counts).
read -r chown2_calls chown2_writes < <(straced chown -R 0:0 "$WORK/coreutils")
read -r chmod2_calls chmod2_writes < <(straced chmod -R u=rwX,go= "$WORK/coreutils")
chown1_calls=$chown2_calls chown1_writes=$chown2_writes chmod1_calls=$chmod2_calls chmod1_writes=$chmod2_writes

add() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%g", a + b }'; }

printf '\nOutput lock, %d files in %s folders (first pass: tree of mixed modes/owners; no-op: same tree again)\n\n' \
	"$N" "$(($(field entries "$first") - N))"
printf '%-34s %10s %10s %12s %14s\n' "" "seconds" "writes" "fs syscalls" "all syscalls*"
printf '%-34s %10s %10s %12s %14s\n' "zguard lock, first pass" "$(field seconds "$first")" "$(field writes "$first")" "$(field syscalls "$first")" "-"
printf '%-34s %10s %10s %12s %14s\n' "zguard lock, no-op pass" "$(field seconds "$noop")" "$(field writes "$noop")" "$(field syscalls "$noop")" "$lp_calls"
printf '%-34s %10s %10s %12s %14s\n' "chown -R + chmod -R, first" "$(add "$cu_chown1" "$cu_chmod1")" "$(add "$chown1_writes" "$chmod1_writes")" "-" "$(add "$chown1_calls" "$chmod1_calls")"
printf '%-34s %10s %10s %12s %14s\n' "  chown -R 0:0" "$cu_chown1" "$chown1_writes" "-" "$chown1_calls"
printf '%-34s %10s %10s %12s %14s\n' "  chmod -R u=rwX,go=" "$cu_chmod1" "$chmod1_writes" "-" "$chmod1_calls"
printf '%-34s %10s %10s %12s %14s\n' "chown -R + chmod -R, again" "$(add "$cu_chown2" "$cu_chmod2")" "$(add "$chown2_writes" "$chmod2_writes")" "-" "$(add "$chown2_calls" "$chmod2_calls")"
printf '\n%-34s %10s\n' "zguard lock peak RSS" "KiB"
printf '%-34s %10s\n' "  $SMALL files, first pass" "$(field maxrss_kb "$small")"
printf '%-34s %10s\n' "  $N files, first pass" "$(field maxrss_kb "$first")"
printf '%-34s %10s\n' "  $N files, no-op pass" "$(field maxrss_kb "$noop")"
echo
echo "* strace -f -c, whole process (Go runtime included); writes = chmod/chown family calls;"
echo "  coreutils counts taken on the locked tree (it writes every entry either way)."
echo "  chmod -R u=rwX,go= keeps x on files that had it (0755 -> 0700); the lock sets exactly 0600."
echo "  chown -R / chmod -R write every entry on every run; the lock writes only what differs"
echo "  and never changes hard-linked files (which chown -R / chmod -R would)."
