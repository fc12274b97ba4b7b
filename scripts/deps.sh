#!/usr/bin/env bash
# Installs what zguard's tests, demo and benchmarks need, and starts dockerd
# when it does not answer. Safe to run again and again.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have dockerd         || need_pkgs+=(docker.io)
have iptables        || need_pkgs+=(iptables)
have ipset           || need_pkgs+=(ipset)
have conntrack       || need_pkgs+=(conntrack)
have docker-registry || need_pkgs+=(docker-registry)
have nginx           || need_pkgs+=(nginx)
have wrk             || need_pkgs+=(wrk)
have ip              || need_pkgs+=(iproute2)
have gcc             || need_pkgs+=(gcc)
have curl            || need_pkgs+=(curl)
have strace          || need_pkgs+=(strace)
have pgrep           || need_pkgs+=(procps)

if [ "$(id -u)" != 0 ]; then
	echo "deps: not root; skipping package installs and dockerd start" >&2
	exit 0
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
	echo "deps: installing ${need_pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
	echo "deps: starting dockerd"
	if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then :; else
		setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
	fi
	for _ in $(seq 1 60); do
		docker info >/dev/null 2>&1 && break
		sleep 1
	done
	docker info >/dev/null 2>&1 || { echo "deps: dockerd did not start; see /var/log/dockerd.log" >&2; tail -20 /var/log/dockerd.log >&2 || true; exit 1; }
fi
echo "deps: ok (docker $(docker version --format '{{.Server.Version}}' 2>/dev/null))"
