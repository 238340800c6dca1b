#!/usr/bin/env bash
# Runs the whole benchmark with one command (see BENCHMARKS.md):
#
#   bash bench/run.sh [bench flags...]      e.g. -duration 10s -repeats 5
#   bash bench/run.sh --help                this text and the bench flags
#
# 1. installs wrk, nginx and taskset from Debian packages if missing;
# 2. builds ./cmd/caddy (Caddy + metrics_gateway) and ./bench;
# 3. runs the Go hot-path benchmarks (-count 6; BenchmarkPolicyCPU ten times
#    per lb_policy, alternating) and summarises them with benchstat (skip
#    with BENCH_GO=0);
# 4. waits (up to BENCH_WAIT seconds, default 600) until the 1-minute load
#    average is below BENCH_MAX_LOAD (default 1.0), then runs the load
#    benchmark with the bench program pinned to CPU 0 (it pins the systems
#    under test to CPU 1 itself).
#
# Everything listens on loopback only; every load run is bounded in time.
# Results (results.md with the tables, results.json, pprof-*.txt, gobench.txt)
# go to a new folder bench/out/run-<date>-<time>/ (not tracked by git). The
# committed results, one folder per scenario in bench/results/ (BENCHMARKS.md
# lists them with their commands), are only replaced when asked for, e.g.:
#
#   BENCH_GO=0 BENCH_OUT=bench/results/sick bash bench/run.sh -phases sick -repeats 3 -sick-latency 20ms
set -euo pipefail

cd "$(dirname "$0")/.."
case "${1:-}" in
-h | -help | --help)
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
	echo "The bench flags and their defaults: go run ./bench -h"
	exit 0
	;;
esac
OUT=${BENCH_OUT:-bench/out/run-$(date -u +%Y%m%d-%H%M%S)}
BIN=${BENCH_BIN:-$(mktemp -d /tmp/metrics-gateway-bench-bin.XXXXXX)}
mkdir -p "$OUT" "$BIN"

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then need+=(nginx); fi
if [ ${#need[@]} -gt 0 ]; then
	echo "installing: ${need[*]}" >&2
	$SUDO apt-get update -qq
	for p in "${need[@]}"; do
		if [ "$p" = nginx ]; then
			# nginx-light is enough (upstream, proxy, map); fall back to nginx.
			DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light ||
				DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx
		else
			DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$p"
		fi
	done
	# The package may start a system nginx on port 80; the bench runs its own.
	if pgrep -x nginx >/dev/null && command -v systemctl >/dev/null; then
		$SUDO systemctl stop nginx 2>/dev/null || true
	fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "building caddy (with metrics_gateway) and the bench program into $BIN" >&2
go build -o "$BIN/caddy" ./cmd/caddy
go build -o "$BIN/bench" ./bench

gobench_flag=()
if [ "${BENCH_GO:-1}" != 0 ]; then
	echo "Go benchmarks: grpcpush, caddymodule (-count 6)" >&2
	go test -run '^$' -bench . -skip PolicyCPU -benchmem -count 6 ./grpcpush/ ./caddymodule/ | tee "$OUT/gobench-raw.txt" >&2
	BENCHSTAT=$(command -v benchstat || echo "$(go env GOPATH)/bin/benchstat")
	if [ ! -x "$BENCHSTAT" ]; then
		(cd /tmp && go install golang.org/x/perf/cmd/benchstat@latest)
	fi
	"$BENCHSTAT" "$OUT/gobench-raw.txt" >"$OUT/gobench.txt"
	# CPU per push by lb_policy: one policy per process, alternating, because
	# the first benchmark in a process pays for warming it up.
	echo "Go benchmark: BenchmarkPolicyCPU, round_robin and least_conn alternating (x10)" >&2
	go test -c -o "$BIN/grpcpush.test" ./grpcpush/
	for _ in $(seq 10); do
		for policy in round_robin least_conn; do
			(cd grpcpush && "$BIN/grpcpush.test" -test.run '^$' -test.bench "PolicyCPU/policy=$policy\$" -test.benchtime 10000x)
		done
	done | tee "$OUT/gobench-policy-raw.txt" >&2
	"$BENCHSTAT" -col /policy "$OUT/gobench-policy-raw.txt" >>"$OUT/gobench.txt"
	gobench_flag=(-gobench "$OUT/gobench.txt")
fi

# Wait for a quiet machine: other builds and tests skew every number.
max_load=${BENCH_MAX_LOAD:-1.0}
deadline=$((SECONDS + ${BENCH_WAIT:-600}))
while :; do
	load=$(cut -d' ' -f1 /proc/loadavg)
	if awk -v l="$load" -v m="$max_load" 'BEGIN { exit !(l < m) }'; then break; fi
	if [ $SECONDS -ge $deadline ]; then
		echo "load average still $load (>= $max_load); measuring anyway (the report records it)" >&2
		break
	fi
	echo "load average $load >= $max_load; waiting 30 s" >&2
	sleep 30
done
echo "uptime: $(uptime)" >&2

rc=0
BENCH_INVOCATION=$(echo "${BENCH_OUT:+BENCH_OUT=$BENCH_OUT }bash bench/run.sh $*" | sed "s/ *$//") taskset -c 0 "$BIN/bench" -caddy "$BIN/caddy" -nginx "$NGINX" \
	-wrk "$(command -v wrk)" -out "$OUT" "${gobench_flag[@]}" "$@" || rc=$?
if [ -z "${BENCH_BIN:-}" ]; then rm -rf "$BIN"; fi
exit $rc
