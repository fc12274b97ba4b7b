#!/usr/bin/env bash
# `make demo`: installs what is missing, builds zguard and the stand-in
# ComfyUI image, starts the agent on demo/config.toml, sends one prompt
# through the gateway, and shows `zguard status`. `make demo-stop` undoes it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$PWD/demo/run
PORT=${DEMO_PORT:-18188}
GATEWAY_PORT=${DEMO_GATEWAY_PORT:-18080}
ZG="bin/zguard --socket $RUN/zguard.sock"

stop() {
	if [ -f "$RUN/agent.pid" ] && kill -0 "$(cat "$RUN/agent.pid")" 2>/dev/null; then
		kill "$(cat "$RUN/agent.pid")"
		for _ in $(seq 1 50); do kill -0 "$(cat "$RUN/agent.pid")" 2>/dev/null || break; sleep 0.1; done
	fi
	docker rm -f zguard-demo-comfyui zguard-demo-comfyui-zguard-old >/dev/null 2>&1 || true
	[ -x bin/zguard ] && bin/zguard cleanup --chain-prefix ZGDEMO >/dev/null 2>&1 || true
	rm -f "$RUN/agent.pid"
}

if [ "${1:-}" = stop ]; then
	stop
	echo "demo stopped: agent, container and ZGDEMO firewall rules removed"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "the demo needs root (firewall rules, Docker, chown)" >&2
	exit 1
fi

./scripts/deps.sh
make build
stop
mkdir -p "$RUN/output"
bin/fakecomfy -build-image zguard-fakecomfy:demo
sed -e "s#@RUN@#$RUN#g" -e "s#@PORT@#$PORT#g" -e "s#@GATEWAY_PORT@#$GATEWAY_PORT#g" demo/config.toml > "$RUN/config.toml"
# A demo user and API token for the gateway.
printf 'demo-password-0123\n' | bin/zguard passwd -f "$RUN/htpasswd" demo >/dev/null
TOKEN=$(bin/zguard token -f "$RUN/tokens" demo-api | grep -Eo '[A-Za-z0-9_-]{40,}' | head -1)
bin/zguard check -c "$RUN/config.toml"

setsid bin/zguard --socket "$RUN/zguard.sock" run -c "$RUN/config.toml" >"$RUN/zguard.log" 2>&1 < /dev/null &
echo $! > "$RUN/agent.pid"
echo "agent started (pid $(cat "$RUN/agent.pid")), log: $RUN/zguard.log"
for _ in $(seq 1 120); do
	$ZG status >/dev/null 2>&1 && break
	sleep 0.5
done

echo
echo "== ComfyUI without credentials through the gateway (expect 401):"
curl -s -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$GATEWAY_PORT/system_stats" || true
echo "== a prompt through the gateway with the demo API token:"
curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
	-d '{"prompt":{"3":{"class_type":"KSampler","inputs":{"steps":10}},"9":{"class_type":"SaveImage","inputs":{"filename_prefix":"demo"}}}}' \
	"http://127.0.0.1:$GATEWAY_PORT/prompt" || true
echo
sleep 2
echo "== output folder (locked to 0700/0600 root:root):"
ls -la "$RUN/output" | head -5
echo
echo "== docker port bindings (loopback only):"
docker port zguard-demo-comfyui || true
echo
echo "== zguard status:"
$ZG status || true
cat <<MSG

The demo keeps running. Try:
  $ZG status --json
  curl -u demo:demo-password-0123 http://127.0.0.1:$GATEWAY_PORT/
  edit $RUN/config.toml, then: $ZG reload
Stop it with: make demo-stop
MSG
