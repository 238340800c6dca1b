package caddyfile_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/metrics-gateway/metrics_gateway/caddymodule"
	"github.com/metrics-gateway/metrics_gateway/grpcpush"
)

// FuzzCaddyfileDirective adapts a site whose metrics_gateway block holds
// arbitrary tokens, through Caddy's real Caddyfile adapter. Whatever the
// tokens, adapting must not panic, and a block it accepts must be a config
// the module accepts too: every URL parses, prefixes are valid, retries are
// in range.
func FuzzCaddyfileDirective(f *testing.F) {
	f.Add("proxy {\n default http://localhost:8080\n}")
	f.Add("proxy {\n default http://a:1\n distributor dns:///d:9095 {\n refresh 10s\n timeout 30s\n retries 2\n max_request_body 100MiB\n keepalive 20s 10s\n compression gzip\n }\n}\nprometheus_http_prefix /prometheus\ndefault_tenant anonymous")
	f.Add("proxy {\n default http://a:1 http://b:2 {\n lb_policy round_robin\n health_uri /ready\n }\n store-gateway h2c://c:3\n}\ntenant {http.auth.user.id}")
	f.Add("proxy {\n default dns://127.0.0.1:53/x:1 {\n tls {\n ca a\n cert b\n key c\n server_name d\n insecure_skip_verify\n }\n }\n}")
	f.Add("proxy {\n default http://a:1\n default http://b:2\n}")
	f.Add("proxy {\n}\n}\n}\n{")
	f.Add("proxy {\n default \"dns:///a b:1\" {\n retries -1\n keepalive 1s 2s 3s\n }\n}")
	f.Add("proxy {\n default http://a:1\n}\naccess_policies {\n policy a {\n tenants team-a *\n scopes metrics:write admin\n token sha256:5186f826f5d539170c709761eb3ad20f29bf824d63c5746937db4404351096b5 expires 2027-01-01T00:00:00Z\n }\n file /p.yaml\n realm r\n oidc {\n issuer https://idp\n audience a\n policy_claim c\n }\n}")
	f.Fuzz(func(t *testing.T, block string) {
		// import reads files: /dev and /proc have some that never end,
		// which would hang the fuzzer without saying anything about the
		// directive.
		if len(block) > 4096 || strings.Contains(block, "import") {
			return
		}
		site := ":80 {\n\tmetrics_gateway {\n" + block + "\n\t}\n}\n"
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(site), map[string]any{"filename": "Caddyfile"})
		if err != nil {
			return
		}
		for _, g := range adaptedGateways(t, out) {
			checkAdaptedGateway(t, block, g)
		}
	})
}

// adaptedGateways returns every metrics_gateway handler of an adapted config,
// wherever the adapter nested it.
func adaptedGateways(t *testing.T, out []byte) []caddymodule.Gateway {
	var all []caddymodule.Gateway
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if x["handler"] == "metrics_gateway" {
				raw, _ := json.Marshal(x)
				var g caddymodule.Gateway
				if err := json.Unmarshal(raw, &g); err != nil {
					t.Fatalf("adapted handler does not unmarshal: %v\n%s", err, raw)
				}
				all = append(all, g)
			}
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	var cfg any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatalf("adapted config is not JSON: %v", err)
	}
	walk(cfg)
	return all
}

func checkAdaptedGateway(t *testing.T, block string, g caddymodule.Gateway) {
	if g.Proxy.Default == nil {
		t.Fatalf("adapted without proxy.default:\n%s", block)
	}
	for _, c := range caddymodule.Components {
		b := g.Proxy.Get(c)
		if b == nil {
			continue
		}
		u, err := caddymodule.ParseBackendURL(b.URL)
		if err != nil {
			t.Fatalf("adapted %s url %q, which the module refuses: %v\n%s", c, b.URL, err, block)
		}
		if b.GRPC != nil && u.Kind != caddymodule.KindGRPC {
			t.Fatalf("grpc options on a %s URL:\n%s", u.Kind, block)
		}
		if b.GRPC != nil && b.GRPC.Retries != nil && (*b.GRPC.Retries < 0 || *b.GRPC.Retries > grpcpush.MaxRetries) {
			t.Fatalf("adapted retries %d:\n%s", *b.GRPC.Retries, block)
		}
	}
	if g.AccessPolicies != nil {
		if err := g.AccessPolicies.Validate(); err != nil {
			t.Fatalf("adapted access_policies the module refuses: %v\n%s", err, block)
		}
	}
	for _, p := range []string{g.PrometheusHTTPPrefix, g.AlertmanagerHTTPPrefix} {
		if p != "" && caddymodule.CheckPrefix(p) != nil {
			t.Fatalf("adapted invalid prefix %q:\n%s", p, block)
		}
	}
}
