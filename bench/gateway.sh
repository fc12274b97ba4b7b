#!/usr/bin/env bash
# Gateway benchmark: wrk on loopback, 20 connections, authenticated GETs of
# ComfyUI's small index page served by the fake ComfyUI container, through
#   (a) zguard's gateway (gateway/internal/gatewayd: the gateway code alone),
#   (b) nginx auth_basic with the same bcrypt cost-10 htpasswd,
#   (c) nginx without auth, as usually configured (plain proxy_pass: a new
#       upstream connection per request),
#   (c') nginx without auth, tuned with upstream keepalive,
#   (d) the upstream directly (the limit).
# (b) uses the plain proxy_pass too; its cost is bcrypt either way.
# Then the CPU seconds each of (a) and (b) burns on 1,000 wrong-password
# attempts (distinct passwords, 20 at a time, from 127.0.0.9): zguard with
# its default lockout (5 failures -> ban), nginx as it is (no lockout).
#
# Needs root, dockerd, nginx and wrk. Usage: bench/gateway.sh [DURATION]
set -euo pipefail

DUR=${1:-10s}
CONNS=20
ATTEMPTS=1000
cd "$(dirname "$0")/.."

for t in docker nginx wrk; do
	if ! command -v "$t" >/dev/null; then
		echo "gateway bench: $t not installed (skipped)" >&2
		exit 0
	fi
done
if [[ $(id -u) -ne 0 ]]; then
	echo "gateway bench: needs root (skipped)" >&2
	exit 0
fi

WORK=$(mktemp -d /tmp/zguard-bench-gateway.XXXXXX)
CTR=zguard-bench-gw-$$
TAG=zguard-fakecomfy:bench-gateway
GW_PID=
NGX_CONF=$WORK/nginx/nginx.conf
cleanup() {
	[[ -n $GW_PID ]] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
	if [[ -f $WORK/nginx/nginx.pid ]]; then
		nginx -p "$WORK/nginx" -c "$NGX_CONF" -s stop 2>/dev/null || true
		for _ in $(seq 50); do [[ -f $WORK/nginx/nginx.pid ]] || break; sleep 0.1; done
	fi
	docker rm -f "$CTR" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL [AUTH]
	for _ in $(seq 100); do
		if curl -s -o /dev/null -w '%{http_code}' ${2:+-H "Authorization: $2"} "$1" 2>/dev/null | grep -q '^200$'; then return 0; fi
		sleep 0.1
	done
	echo "gateway bench: $1 did not come up" >&2
	return 1
}
# cpu_of PID...: user+system clock ticks of the processes.
cpu_of() {
	local sum=0 p
	for p in "$@"; do
		[[ -r /proc/$p/stat ]] || continue
		sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat")))
	done
	echo "$sum"
}
nginx_pids() { # master and its workers
	local m
	m=$(cat "$WORK/nginx/nginx.pid")
	echo "$m"
	awk -v m="$m" '$4 == m {print $1}' /proc/[0-9]*/stat 2>/dev/null || true
}

echo "building the fake ComfyUI image and the gateway..." >&2
CGO_ENABLED=0 go build -o "$WORK/fakecomfy" ./cmd/fakecomfy
go build -o "$WORK/gatewayd" ./gateway/internal/gatewayd
"$WORK/fakecomfy" -build-image "$TAG" >/dev/null

UP_PORT=$(free_port)
docker run -d --name "$CTR" -p "127.0.0.1:$UP_PORT:8188" "$TAG" >/dev/null
UP=http://127.0.0.1:$UP_PORT
wait_http "$UP/"

PW=bench-password-$$-long
go run ./cmd/zguard passwd -f "$WORK/htpasswd" -cost 10 bench <<<"$PW" 2>/dev/null
AUTH="Basic $(printf 'bench:%s' "$PW" | base64 -w0)"

GW_PORT=$(free_port)
"$WORK/gatewayd" -listen "127.0.0.1:$GW_PORT" -upstream "$UP" -htpasswd "$WORK/htpasswd" -audit "$WORK/audit.jsonl" >"$WORK/gatewayd.log" 2>&1 &
GW_PID=$!
wait_http "http://127.0.0.1:$GW_PORT/" "$AUTH"

NA_PORT=$(free_port)
NN_PORT=$(free_port)
NK_PORT=$(free_port)
mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
cat >"$NGX_CONF" <<NGX
user root;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path $WORK/nginx/tmp/body;
	proxy_temp_path $WORK/nginx/tmp/proxy;
	fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
	uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
	scgi_temp_path $WORK/nginx/tmp/scgi;
	upstream comfy { server 127.0.0.1:$UP_PORT; keepalive 64; }
	server {
		listen 127.0.0.1:$NA_PORT;
		auth_basic "ComfyUI";
		auth_basic_user_file $WORK/htpasswd;
		location / { proxy_pass http://127.0.0.1:$UP_PORT; }
	}
	server {
		listen 127.0.0.1:$NN_PORT;
		location / { proxy_pass http://127.0.0.1:$UP_PORT; }
	}
	server {
		listen 127.0.0.1:$NK_PORT;
		location / { proxy_pass http://comfy; proxy_http_version 1.1; proxy_set_header Connection ""; }
	}
}
NGX
nginx -p "$WORK/nginx" -c "$NGX_CONF"
wait_http "http://127.0.0.1:$NA_PORT/" "$AUTH"
wait_http "http://127.0.0.1:$NN_PORT/"
wait_http "http://127.0.0.1:$NK_PORT/"

# run_wrk NAME URL [AUTH]: prints "req/s p50 p99".
run_wrk() {
	local out rps p50 p99
	out=$(wrk -t2 -c"$CONNS" -d"$DUR" --latency ${3:+-H "Authorization: $3"} "$2")
	echo "$out" >"$WORK/wrk-$1.txt"
	if grep -q 'Non-2xx' <<<"$out"; then
		echo "gateway bench: $1 answered non-2xx:" >&2
		echo "$out" >&2
	fi
	rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
	p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
	p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
	echo "$rps $p50 $p99"
}

echo "wrk -c$CONNS -d$DUR each (one at a time)..." >&2
read -r A_RPS A_P50 A_P99 < <(run_wrk zguard "http://127.0.0.1:$GW_PORT/" "$AUTH")
read -r B_RPS B_P50 B_P99 < <(run_wrk nginx-auth "http://127.0.0.1:$NA_PORT/" "$AUTH")
read -r C_RPS C_P50 C_P99 < <(run_wrk nginx-noauth "http://127.0.0.1:$NN_PORT/")
read -r K_RPS K_P50 K_P99 < <(run_wrk nginx-keepalive "http://127.0.0.1:$NK_PORT/")
read -r D_RPS D_P50 D_P99 < <(run_wrk upstream "$UP/")

echo "$ATTEMPTS wrong passwords against each..." >&2
hz=$(getconf CLK_TCK)
before=$(cpu_of "$GW_PID")
A_ATT=$("$WORK/gatewayd" -attack "http://127.0.0.1:$GW_PORT/" -n "$ATTEMPTS" -c "$CONNS")
A_CPU=$(awk -v d=$(($(cpu_of "$GW_PID") - before)) -v hz="$hz" 'BEGIN {printf "%.2f", d / hz}')
mapfile -t NP < <(nginx_pids)
before=$(cpu_of "${NP[@]}")
B_ATT=$("$WORK/gatewayd" -attack "http://127.0.0.1:$NA_PORT/" -n "$ATTEMPTS" -c "$CONNS")
B_CPU=$(awk -v d=$(($(cpu_of "${NP[@]}") - before)) -v hz="$hz" 'BEGIN {printf "%.2f", d / hz}')

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "-" }'; }
echo
echo "Gateway: wrk, $CONNS connections, $DUR, authenticated GET / of the fake ComfyUI (loopback, $(nproc) CPUs)"
printf '%-34s %12s %10s %10s %14s\n' "setup" "req/s" "p50" "p99" "vs nginx auth"
printf '%-34s %12s %10s %10s %14s\n' "(a) zguard gateway (bcrypt 10)" "$A_RPS" "$A_P50" "$A_P99" "$(ratio "$A_RPS" "$B_RPS")"
printf '%-34s %12s %10s %10s %14s\n' "(b) nginx auth_basic (bcrypt 10)" "$B_RPS" "$B_P50" "$B_P99" "1.0x"
printf '%-34s %12s %10s %10s %14s\n' "(c) nginx, no auth" "$C_RPS" "$C_P50" "$C_P99" "$(ratio "$C_RPS" "$B_RPS")"
printf '%-34s %12s %10s %10s %14s\n' "(c') nginx, no auth, keepalive" "$K_RPS" "$K_P50" "$K_P99" "$(ratio "$K_RPS" "$B_RPS")"
printf '%-34s %12s %10s %10s %14s\n' "(d) upstream directly (limit)" "$D_RPS" "$D_P50" "$D_P99" "$(ratio "$D_RPS" "$B_RPS")"
echo "goals: (a) >= 100x (b) and >= 1.5x (c), p99 <= 15ms; (a)/(c) = $(ratio "$A_RPS" "$C_RPS"), (a)/(c') = $(ratio "$A_RPS" "$K_RPS")"
echo
echo "CPU seconds for $ATTEMPTS wrong-password attempts (distinct passwords, $CONNS at a time)"
printf '%-34s %10s   %s\n' "setup" "CPU s" "answers"
printf '%-34s %10s   %s\n' "(a) zguard (lockout 5/10m)" "$A_CPU" "$A_ATT"
printf '%-34s %10s   %s\n' "(b) nginx auth_basic" "$B_CPU" "$B_ATT"
