#!/usr/bin/env bash
# Counts the system calls a proxy makes per request under load (see
# BENCHMARKS.md, "Profile"): runs the count-only load of the bench against one
# system at a time, attaches strace to the proxy for one second and splits the
# calls into client side (sockets from 127.0.0.1) and upstream side (sockets
# to the stand-ins on 127.0.0.2-4). Requests are counted as the writes to
# client sockets (one response, one write). strace slows the proxy down; the
# counts per request stay meaningful, the rate does not.
#
#   bash bench/syscalls.sh [nginx caddy-rp gateway]
set -euo pipefail

cd "$(dirname "$0")/.."
systems=("$@")
[ ${#systems[@]} -gt 0 ] || systems=(nginx caddy-rp gateway)
command -v strace >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace; }
BIN=$(mktemp -d /tmp/metrics-gateway-syscalls.XXXXXX)
trap 'rm -rf "$BIN"' EXIT
go build -o "$BIN/caddy" ./cmd/caddy
go build -o "$BIN/bench" ./bench

for sys in "${systems[@]}"; do
	taskset -c 0 "$BIN/bench" -caddy "$BIN/caddy" -systems "$sys" -phases capacity -repeats 1 \
		-duration 6s -warmup 1s -out "$BIN/out-$sys" >/dev/null 2>"$BIN/$sys.log" &
	bench=$!
	sleep 3.5 # stand-ins up, proxy started, warm-up done
	if [ "$sys" = nginx ] || [ "$sys" = nginx-helm ]; then
		pid=$(pgrep -f "nginx: worker" -n)
	else
		pid=$(pgrep -f "caddy run --adapter caddyfile --config /tmp/metrics-gateway-bench" -n)
	fi
	timeout -s INT 1 strace -f -qq -yy -s 0 -p "$pid" -o "$BIN/$sys.trace" \
		-e trace=read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg,epoll_wait,epoll_pwait,futex,nanosleep,accept4,connect,close \
		2>/dev/null || true
	wait "$bench"
	awk -v sys="$sys" '
	$2 ~ /^</ { next } # resumed calls were counted when they started
	{
		call = $2; sub(/\(.*/, "", call)
		side = "other"
		if ($0 ~ /->127\.0\.0\.[234]:/) side = "upstream"
		else if ($0 ~ /TCP:\[127\.0\.0\.1:[0-9]+->127\.0\.0\.1:/) side = "client"
		key = side " " call (($0 ~ /EAGAIN/) ? " (EAGAIN)" : "")
		n[key]++; total++
		if (side == "client" && (call == "write" || call == "writev")) req++
	}
	END {
		if (req == 0) { print sys ": no requests seen"; exit }
		printf "%s: %d requests in the window, %.2f system calls per request\n", sys, req, total / req
		for (k in n) printf "  %-32s %.2f per request\n", k, n[k] / req | "sort"
		close("sort")
	}' "$BIN/$sys.trace"
done
