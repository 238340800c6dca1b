package caddymodule

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
)

func (g *Gateway) newGRPCBackend(ctx caddy.Context, c Component, b *Backend, u *ParsedURL) (upstream, error) {
	return nil, fmt.Errorf("url: %q: the gRPC upstream for dns: URLs is not available in this build", b.URL)
}

func releaseGRPCBackends(keys []string) error { return nil }
