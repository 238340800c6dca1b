// Command caddy is Caddy with its standard modules and metrics_gateway, so
// that `go run ./cmd/caddy run --config examples/Caddyfile` works without
// xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/metrics-gateway/metrics_gateway"
)

func main() {
	caddycmd.Main()
}
