#!/usr/bin/env bash
# Runs TestRealMimirInflightLimit (caddymodule/mimir_test.go) against real
# Mimir processes: two single-process Mimirs behind the gateway, one with
# -distributor.instance-limits.max-inflight-push-requests-bytes set low. See
# RELIABILITY.md, "Against a real Mimir".
#
# Builds Mimir first unless MIMIR_BINARY names an existing binary. The build
# takes a few minutes and about 2 GB of module cache.
#
#   examples/mimir/run-check.sh
#   MIMIR_BINARY=/path/to/mimir examples/mimir/run-check.sh
set -euo pipefail

# Mimir 3.0.5 (main of 2026-04-23); the module version of that commit.
MIMIR_VERSION=${MIMIR_VERSION:-v1.3.1-0.20260423142704-aced80d74930}
MIMIR_SRC=${MIMIR_SRC:-${TMPDIR:-/tmp}/mimir-src-$MIMIR_VERSION}
MIMIR_BINARY=${MIMIR_BINARY:-${TMPDIR:-/tmp}/mimir-$MIMIR_VERSION}
repo=$(cd "$(dirname "$0")/../.." && pwd)

if [ ! -x "$MIMIR_BINARY" ]; then
	# Outside any module, so that this repository's go.mod is not touched.
	dir=$(cd "$(mktemp -d)" && go mod download -json "github.com/grafana/mimir@$MIMIR_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -n "$dir" ] || { echo "go mod download gave no Dir" >&2; exit 1; }
	# The module cache is read-only; Mimir's go.mod needs -mod=mod (it has no
	# vendor directory), which may write go.sum.
	rm -rf "$MIMIR_SRC"
	cp -r "$dir" "$MIMIR_SRC"
	chmod -R u+w "$MIMIR_SRC"
	# The build tags of Mimir's Makefile.
	(cd "$MIMIR_SRC" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -tags netgo,stringlabels -o "$MIMIR_BINARY" ./cmd/mimir)
fi
"$MIMIR_BINARY" -version

cd "$repo"
MIMIR_BINARY="$MIMIR_BINARY" go test -count=1 -run TestRealMimirInflightLimit -v ./caddymodule/
