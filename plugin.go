// Package metricsgateway registers the metrics_gateway Caddy module and its
// Caddyfile directive. Import it (or build with
// `xcaddy build --with github.com/metrics-gateway/metrics_gateway`) to add
// the gateway to a Caddy binary.
package metricsgateway

import (
	_ "github.com/metrics-gateway/metrics_gateway/caddyfile"
	_ "github.com/metrics-gateway/metrics_gateway/caddymodule"
)
