#!/usr/bin/env bash
# Supervisor benchmark, side by side with Docker's own restart policy:
#  1. recovery: time from the container's main process being SIGKILLed
#     (a crash, or zguard's own GPU watchdog kill) to the health URL
#     answering again (median, min, max of N kills), zguard vs
#     `--restart=always`. (`docker kill` itself counts as a manual stop for
#     Docker's restart policy, which then does not restart at all; zguard
#     does. That case is reported too.)
#  2. update: time from a new digest pushed to the registry to the new
#     container healthy and serving, with update_interval = 1s.
# Both restart mechanisms reset their backoff after 10 s of uptime, so kills
# are spaced 11 s apart. Uses only loopback. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10}
work=$(mktemp -d)
name=zgbench-sup-$$
ref_name=zgbench-ref-$$
agent_pid=""
reg_pid=""
cleanup() {
	[ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
	[ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null || true
	docker rm -f "$name" "$name-zguard-old" "$ref_name" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "bench/supervisor.sh: failed at line $LINENO (agent log below)" >&2; tail -20 "$work/agent.log" >&2 2>/dev/null || true' ERR

[ -x bin/zguard ] && [ -x bin/fakecomfy ] || make build >/dev/null
bin/fakecomfy -build-image zguard-fakecomfy:bench-v1 -- -version v1 >/dev/null
bin/fakecomfy -build-image zguard-fakecomfy:bench-v2 -- -version v2 >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
wait_ok() { # url timeout_s
	local deadline=$(( $(now_ms) + $2 * 1000 ))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		curl -fsS -m 1 -o /dev/null "$1" 2>/dev/null && return 0
		sleep 0.005
	done
	return 1
}
wait_version() { # port version timeout_s
	local deadline=$(( $(now_ms) + $3 * 1000 ))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		curl -fsS -m 1 "http://127.0.0.1:$1/fake/stats" 2>/dev/null | grep -q "\"version\":\"$2\"" && return 0
		sleep 0.01
	done
	return 1
}
stats() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%d %d %d\n", m, a[1], a[NR]}'; }

# Registry on loopback for the update measurement.
rport=$(free_port)
mkdir -p "$work/reg"
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$work/reg" "$rport" > "$work/zguard-test-registry.yml"
docker-registry serve "$work/zguard-test-registry.yml" >/dev/null 2>&1 &
reg_pid=$!
sleep 1
# The agent pulls 127.0.0.1:PORT/...; pushes go through localhost:PORT/...
# so that retagging for a push never races with the agent's pulls.
ref=127.0.0.1:$rport/zgbench/comfy:latest
via=localhost:$rport/zgbench/comfy:latest
docker tag zguard-fakecomfy:bench-v1 "$via" && docker push -q "$via" >/dev/null

port=$(free_port)
cat > "$work/config.toml" <<CFG
[agent]
socket = "$work/zguard.sock"
[container]
name = "$name"
image = "$ref"
pull = "always"
gpus = "none"
ports = [{ container = 8188, host = $port }]
update_interval = "1s"
reconcile_interval = "1s"
health_timeout = "30s"
restart = { initial = "100ms", max = "1m", reset_after = "10s" }
[firewall]
enabled = false
[output]
enabled = false
[gpu]
enabled = false
[gateway]
enabled = false
CFG
bin/zguard --socket "$work/zguard.sock" run -c "$work/config.toml" >"$work/agent.log" 2>&1 &
agent_pid=$!
wait_ok "http://127.0.0.1:$port/system_stats" 60 || { echo "agent did not bring the container up"; tail "$work/agent.log"; exit 1; }

crash() { kill -9 "$(docker inspect -f '{{.State.Pid}}' "$1")"; }
echo "recovery after the main process is SIGKILLed ($N kills, 11 s apart):"
: > "$work/zg.txt"
for i in $(seq 1 "$N"); do
	sleep 11
	t0=$(now_ms); crash "$name"
	wait_ok "http://127.0.0.1:$port/system_stats" 60
	echo $(( $(now_ms) - t0 )) >> "$work/zg.txt"
done

rport2=$(free_port)
docker run -d --name "$ref_name" --restart=always -p "127.0.0.1:$rport2:8188" zguard-fakecomfy:bench-v1 >/dev/null
wait_ok "http://127.0.0.1:$rport2/system_stats" 30
: > "$work/docker.txt"
for i in $(seq 1 "$N"); do
	sleep 11
	t0=$(now_ms); crash "$ref_name"
	wait_ok "http://127.0.0.1:$rport2/system_stats" 60
	echo $(( $(now_ms) - t0 )) >> "$work/docker.txt"
done
# `docker kill`: a manual stop to Docker's restart policy.
sleep 11
t0=$(now_ms); docker kill "$name" >/dev/null
wait_ok "http://127.0.0.1:$port/system_stats" 60
zkill=$(( $(now_ms) - t0 ))
docker kill "$ref_name" >/dev/null
if wait_ok "http://127.0.0.1:$rport2/system_stats" 15; then dkill="restarted"; else dkill="not restarted (15 s)"; fi
read -r zmed zmin zmax < <(stats < "$work/zg.txt")
read -r dmed dmin dmax < <(stats < "$work/docker.txt")
printf '%-34s %10s %10s %10s\n' "SIGKILL -> healthy again (ms)" median min max
printf '%-34s %10s %10s %10s\n' "zguard (event-driven restart)" "$zmed" "$zmin" "$zmax"
printf '%-34s %10s %10s %10s\n' "docker --restart=always" "$dmed" "$dmin" "$dmax"
printf '%-34s zguard: healthy after %s ms; docker --restart=always: %s\n' "after \`docker kill\`:" "$zkill" "$dkill"

echo
echo "update: new digest pushed -> new container healthy (update_interval = 1s):"
: > "$work/upd.txt"
for v in v2 v1 v2; do
	docker tag "zguard-fakecomfy:bench-$v" "$via"
	t0=$(now_ms); docker push -q "$via" >/dev/null
	wait_version "$port" "$v" 120
	echo $(( $(now_ms) - t0 )) >> "$work/upd.txt"
done
read -r umed umin umax < <(stats < "$work/upd.txt")
printf '%-34s %10s %10s %10s\n' "push -> serving new digest (ms)" "$umed" "$umin" "$umax"
printf '%-34s %s\n' "docker --restart=always" "never updates (Watchtower: no health gate, no rollback)"
