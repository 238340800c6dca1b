package caddyfile_test

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/metrics-gateway/metrics_gateway/caddyfile"
)

func adapt(t *testing.T, caddyfile string) ([]byte, error) {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	return out, err
}

// gatewayHandler adapts a Caddyfile and returns the metrics_gateway handler
// it produced.
func gatewayHandler(t *testing.T, caddyfile string) map[string]any {
	t.Helper()
	out, err := adapt(t, caddyfile)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []map[string]any `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, srv := range cfg.Apps.HTTP.Servers {
		for _, r := range srv.Routes {
			for _, h := range r.Handle {
				if found := findGateway(h); found != nil {
					return found
				}
			}
		}
	}
	t.Fatalf("no metrics_gateway handler in %s", out)
	return nil
}

// findGateway looks for the handler in h or in its subroutes.
func findGateway(h map[string]any) map[string]any {
	if h["handler"] == "metrics_gateway" {
		return h
	}
	routes, _ := h["routes"].([]any)
	for _, r := range routes {
		handles, _ := r.(map[string]any)["handle"].([]any)
		for _, sub := range handles {
			if found := findGateway(sub.(map[string]any)); found != nil {
				return found
			}
		}
	}
	return nil
}

func TestDirectiveAdapts(t *testing.T) {
	h := gatewayHandler(t, `
:8000 {
	metrics_gateway {
		proxy {
			default        http://mimir:8080
			distributor    dns:///distributor-headless.mimir.svc.cluster.local:9095 dns:///distributor-zone-b.mimir.svc.cluster.local:9095 {
				refresh 10s
				min_ready 2
				timeout 5s
				retries 0
				max_request_body 10MiB
				max_buffered_bytes 256MiB
				keepalive 30s 5s
				compression gzip
				tls {
					ca /etc/ca.pem
					server_name distributor
				}
			}
			query_frontend http://qf-1:8080 http://qf-2:8080 {
				lb_policy round_robin
				health_uri /ready
			}
			store-gateway  https://store-gateway:8443
		}
		prometheus_http_prefix   /api/prom
		alertmanager_http_prefix /am
		tenant                   {http.auth.user.id}
		retry_after              2s 30s
	}
}`)
	want := map[string]any{
		"handler": "metrics_gateway",
		"proxy": map[string]any{
			"default": map[string]any{"url": "http://mimir:8080"},
			"distributor": map[string]any{
				"url": "dns:///distributor-headless.mimir.svc.cluster.local:9095 dns:///distributor-zone-b.mimir.svc.cluster.local:9095",
				"grpc": map[string]any{
					"refresh": float64(10e9), "min_ready": float64(2), "timeout": float64(5e9), "retries": float64(0),
					"max_request_body": float64(10 << 20), "max_buffered_bytes": float64(256 << 20), "keepalive_time": float64(30e9),
					"keepalive_timeout": float64(5e9), "compression": "gzip",
					"tls": map[string]any{"ca": "/etc/ca.pem", "server_name": "distributor"},
				},
			},
			"query_frontend": map[string]any{
				"url": "http://qf-1:8080 http://qf-2:8080",
				"reverse_proxy": map[string]any{
					"load_balancing": map[string]any{"selection_policy": map[string]any{"policy": "round_robin"}},
					"health_checks":  map[string]any{"active": map[string]any{"uri": "/ready"}},
				},
			},
			"store_gateway": map[string]any{"url": "https://store-gateway:8443"},
		},
		"prometheus_http_prefix":   "/api/prom",
		"alertmanager_http_prefix": "/am",
		"tenant":                   "{http.auth.user.id}",
		"retry_after":              map[string]any{"min": float64(2e9), "max": float64(30e9)},
	}
	if !reflect.DeepEqual(h, want) {
		got, _ := json.MarshalIndent(h, "", "  ")
		t.Errorf("adapted handler:\n%s", got)
	}
}

func TestDirectiveEnvPlaceholders(t *testing.T) {
	t.Setenv("MG_TEST_DISTRIBUTOR", "dns:///distributor:9095")
	h := gatewayHandler(t, `
:8000 {
	metrics_gateway {
		proxy {
			default     http://mimir:8080
			distributor {$MG_TEST_DISTRIBUTOR}
		}
	}
}`)
	got := h["proxy"].(map[string]any)["distributor"].(map[string]any)["url"]
	if got != "dns:///distributor:9095" {
		t.Errorf("distributor url = %v", got)
	}
}

// TestLoadTimeErrors checks that every config mistake fails adapting with a
// message that names the field.
func TestLoadTimeErrors(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"unknown component", "default http://a:1\n querier http://b:1", `proxy: unknown component "querier" (known: default, admin_api,`},
		{"duplicate component", "default http://a:1\n store-gateway http://b:1\n store_gateway http://c:1", "proxy: component store_gateway is configured twice (first on line"},
		{"URL without host", "default http://", `proxy.default.url: "http://" has no host`},
		{"unsupported scheme", "default ftp://mimir:21", `proxy.default.url: "ftp://mimir:21": unsupported scheme "ftp" (use http://, https://, h2c:// or dns:///)`},
		{"dns without port", "default http://a:1\n distributor dns:///distributor", `proxy.distributor.url: target "dns:///distributor": missing port in "distributor" (want host:port)`},
		{"dns without host", "default http://a:1\n distributor dns:///", `proxy.distributor.url: target "dns:///": missing host:port`},
		{"mixed schemes", "default http://a:1 https://b:2", `proxy.default.url: "https://b:2": all URLs of one backend must use the same scheme`},
		{"URL with path", "default http://a:1/api", `proxy.default.url: "http://a:1/api": a backend URL is scheme://host[:port] only`},
		{"no default", "distributor http://a:1", "proxy.default: required"},
		{"missing URL", "default", "proxy.default: missing URL"},
		{"bad grpc option", "default http://a:1\n distributor dns:///d:9095 {\n bogus 1\n }", `proxy.distributor: unrecognized option "bogus" for a dns: backend`},
		{"bad refresh", "default http://a:1\n distributor dns:///d:9095 {\n refresh soon\n }", "proxy.distributor.grpc.refresh:"},
		{"bad reverse_proxy option", "default http://a:1 {\n bogus 1\n }", `unrecognized subdirective bogus`},
		{"unknown tls option", "default http://a:1\n distributor dns:///d:9095 {\n tls {\n cafile /ca.pem\n }\n }", `tls: unrecognized option "cafile" (ca, cert, key, server_name, insecure_skip_verify)`},
		{"insecure_skip_verify with a value", "default http://a:1\n distributor dns:///d:9095 {\n tls {\n insecure_skip_verify yes\n }\n }", "wrong argument count"},
		{"tls ca without a value", "default http://a:1\n distributor dns:///d:9095 {\n tls {\n ca\n }\n }", "wrong argument count"},
		{"ca with insecure_skip_verify", "default http://a:1\n distributor dns:///d:9095 {\n tls {\n ca /ca.pem\n insecure_skip_verify\n }\n }", "proxy.distributor.grpc: tls: ca and insecure_skip_verify contradict each other"},
		{"keepalive too often", "default http://a:1\n distributor dns:///d:9095 {\n keepalive 5s\n }", "proxy.distributor.grpc: keepalive time 5s: must be at least 10s"},
		{"unknown lb_policy", "default http://a:1\n distributor dns:///d:9095 {\n lb_policy random\n }", `proxy.distributor.grpc: lb_policy "random": must be round_robin or least_conn`},
		{"negative max_fails", "default http://a:1\n distributor dns:///d:9095 {\n fail_duration 5s\n max_fails -1\n }", "proxy.distributor.grpc: max_fails -1: must not be negative"},
		{"fail_duration without unit", "default http://a:1\n distributor dns:///d:9095 {\n fail_duration 5\n }", `proxy.distributor.grpc.fail_duration: time: missing unit in duration "5"`},
		{"bad unhealthy_status", "default http://a:1\n distributor dns:///d:9095 {\n fail_duration 5s\n unhealthy_status 5xy\n }", `proxy.distributor.grpc.unhealthy_status: "5xy": want a status 100-599 or a class like 5xx`},
		{"dns mixed with http", "default http://a:1\n distributor dns:///d:9095 http://b:1", `proxy.distributor.url: "http://b:1": dns: and HTTP URLs cannot be mixed in one backend`},
		{"http mixed with dns", "default http://a:1 dns:///d:9095", `proxy.default.url: "dns:///d:9095": dns: and HTTP URLs cannot be mixed in one backend`},
		{"dns target twice", "default http://a:1\n distributor dns:///d:9095 dns:///d:9095", `proxy.distributor.url: "dns:///d:9095" is listed twice`},
		{"bad second dns target", "default http://a:1\n distributor dns:///d:9095 dns:///e", `proxy.distributor.url: target "dns:///e": missing port`},
		{"negative min_ready", "default http://a:1\n distributor dns:///d:9095 dns:///e:9095 {\n min_ready -1\n }", "proxy.distributor.grpc.min_ready -1: must not be negative"},
		{"unknown compression", "default http://a:1\n distributor dns:///d:9095 {\n compression zstd\n }", `proxy.distributor.grpc: compression "zstd": must be gzip or none`},
		{"fail_duration 0", "default http://a:1\n distributor dns:///d:9095 {\n fail_duration 0s\n }", "proxy.distributor.grpc.fail_duration: duration 0s must be positive"},
		{"retries not a number", "default http://a:1\n distributor dns:///d:9095 {\n retries two\n }", `proxy.distributor.grpc.retries: strconv.Atoi: parsing "two"`},
		{"bad unhealthy_latency", "default http://a:1\n distributor dns:///d:9095 {\n fail_duration 5s\n unhealthy_latency 0s\n }", "proxy.distributor.grpc.unhealthy_latency: duration 0s must be positive"},
		{"too many retries", "default http://a:1\n distributor dns:///d:9095 {\n retries 7\n }", "proxy.distributor.grpc: retries 7: must be 0-4"},
		{"cert without key", "default http://a:1\n distributor dns:///d:9095 {\n tls {\n cert c.pem\n }\n }\n }", "proxy.distributor.grpc: tls: cert and key must be given together"},
		{"buffered bytes below the body limit", "default http://a:1\n distributor dns:///d:9095 {\n max_request_body 16MiB\n max_buffered_bytes 8MiB\n }", "proxy.distributor.grpc: max_buffered_bytes 8388608: must be at least 33556481 for max_request_body 16777216"},
		// Above the body limit, but below what reading the largest body holds.
		{"buffered bytes below a body's peak", "default http://a:1\n distributor dns:///d:9095 {\n max_request_body 16MiB\n max_buffered_bytes 24MiB\n }", "proxy.distributor.grpc: max_buffered_bytes 25165824: must be at least 33556481 for max_request_body 16777216"},
		{"bad buffered bytes", "default http://a:1\n distributor dns:///d:9095 {\n max_buffered_bytes lots\n }", "proxy.distributor.grpc.max_buffered_bytes:"},
		{"negative response limit", "default http://a:1\n distributor dns:///d:9095 {\n max_response_body 3GiB\n }", "proxy.distributor.grpc: max_response_body 3221225472: must be 1 byte to 2 GiB-1 MiB"},
		// Given twice, the second would silently replace the first (the
		// second tls block dropping the first's ca).
		{"tls twice", "default http://a:1\n distributor dns:///d:9095 {\n tls {\n ca /ca.pem\n }\n tls {\n server_name d\n }\n }", "proxy.distributor.grpc.tls: given twice"},
		{"timeout twice", "default http://a:1\n distributor dns:///d:9095 {\n timeout 5s\n timeout 9s\n }", "proxy.distributor.grpc.timeout: given twice"},
		{"tls option twice", "default http://a:1\n distributor dns:///d:9095 {\n tls {\n ca /a.pem\n ca /b.pem\n }\n }", "tls.ca: given twice"},
		{"empty tls value", "default http://a:1\n distributor dns:///d:9095 {\n tls {\n ca \"\"\n }\n }", "tls.ca: empty value"},
		{"empty compression", "default http://a:1\n distributor dns:///d:9095 {\n compression \"\"\n }", "proxy.distributor.grpc.compression: empty value"},
		// What loading refuses, adapting refuses: a reverse_proxy block
		// naming its own upstreams or a transport its URL contradicts.
		{"reverse_proxy to", "default http://a:1 {\n to http://b:2\n }", "proxy.default: reverse_proxy: upstreams come from url"},
		{"reverse_proxy dynamic", "default http://a:1 {\n dynamic srv _x._tcp.example.com\n }", "proxy.default: reverse_proxy: upstreams come from url"},
		{"transport tls on http://", "default http://a:1 {\n transport http {\n tls\n }\n }", "proxy.default: reverse_proxy.transport: tls is set but the URL is http://"},
		{"h2c:// with fastcgi", "default h2c://a:1 {\n transport fastcgi\n }", "proxy.default: reverse_proxy.transport: h2c:// URLs need the http transport"},
		// A call ends at timeout: none could be later than this.
		{"unhealthy_latency from timeout on", "default http://a:1\n distributor dns:///d:9095 {\n timeout 5s\n fail_duration 10s\n unhealthy_latency 5s\n }", "proxy.distributor.grpc: unhealthy_latency 5s: must be below timeout 5s"},
		// One target in two spellings (port 53 is the default).
		{"dns target twice, spelled two ways", "default http://a:1\n distributor dns://10.0.0.1/d:9095 dns://10.0.0.1:53/d:9095", `proxy.distributor.url: "dns://10.0.0.1:53/d:9095" is listed twice`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := adapt(t, ":8000 {\n metrics_gateway {\n proxy {\n "+c.body+"\n }\n }\n}")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v\nwant it to contain %q", err, c.want)
			}
		})
	}

	t.Run("empty proxy block", func(t *testing.T) {
		_, err := adapt(t, ":8000 {\n metrics_gateway {\n proxy {\n }\n }\n}")
		if err == nil || !strings.Contains(err.Error(), "proxy: empty proxy block; set at least `default <url>`") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("no proxy block", func(t *testing.T) {
		_, err := adapt(t, ":8000 {\n metrics_gateway {\n default_tenant x\n }\n}")
		if err == nil || !strings.Contains(err.Error(), "a proxy block is required") {
			t.Errorf("got %v", err)
		}
	})
	for _, c := range []struct{ name, option, want string }{
		{"federated literal tenant", "tenant a|b", `tenant: tenant ID 'a|b' contains unsupported character '|'`},
		{"literal tenant with a bad character", "tenant team/1", `tenant: tenant ID 'team/1' contains unsupported character '/'`},
		{"invalid default tenant", "default_tenant ..", `default_tenant: tenant ID is '.' or '..'`},
		{"retry_after one bound", "retry_after 6s", "retry_after: want <min> <max> (e.g. 6s 96s) or off"},
		{"retry_after below a second", "retry_after 500ms 10s", "retry_after min 500ms: must be at least 1s"},
		{"retry_after max below min", "retry_after 10s 5s", "retry_after max 5s: must be at least min (10s)"},
		{"retry_after not a duration", "retry_after soon 10s", `retry_after: time: invalid duration "soon"`},
		// An empty value, or an empty environment variable, is not "unset":
		// an empty tenant would let every client pick its own.
		{"empty tenant", `tenant ""`, "tenant: empty value"},
		{"tenant from an unset variable", `tenant "{$METRICS_GATEWAY_TEST_UNSET_VARIABLE}"`, "tenant: empty value"},
		{"empty default tenant", `default_tenant ""`, "default_tenant: empty value"},
		{"empty prefix", `prometheus_http_prefix ""`, "prometheus_http_prefix: empty value"},
		{"default tenant twice", "default_tenant a\n default_tenant b", "default_tenant: given twice"},
		{"mirror tenants twice", "mirror dns:///m:9095 {\n tenants team-a\n tenants team-b\n }", "mirror.tenants: given twice"},
		{"empty policy file", "access_policies {\n file \"\"\n }", "access_policies.file: empty value"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := adapt(t, ":8000 {\n metrics_gateway {\n proxy {\n default http://a:1\n }\n "+c.option+"\n }\n}")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v\nwant it to contain %q", err, c.want)
			}
		})
	}
	t.Run("retry_after off", func(t *testing.T) {
		h := gatewayHandler(t, ":8000 {\n metrics_gateway {\n proxy {\n default http://a:1\n }\n retry_after off\n }\n}")
		if got := h["retry_after"]; !reflect.DeepEqual(got, map[string]any{"off": true}) {
			t.Errorf("retry_after off adapted to %v", got)
		}
	})
	t.Run("tenant with placeholders", func(t *testing.T) {
		// Only known per request, so adapting accepts it.
		if _, err := adapt(t, ":8000 {\n metrics_gateway {\n proxy {\n default http://a:1\n }\n tenant team-{http.auth.user.id}\n }\n}"); err != nil {
			t.Errorf("got %v", err)
		}
	})
	t.Run("colliding prefixes", func(t *testing.T) {
		// Refused when loading; adapting must refuse them too.
		for _, prefixes := range []string{"prometheus_http_prefix /p\n alertmanager_http_prefix /p", "alertmanager_http_prefix /distributor", "prometheus_http_prefix /api/v1/push"} {
			if _, err := adapt(t, ":8000 {\n metrics_gateway {\n proxy {\n default http://a:1\n }\n "+prefixes+"\n }\n}"); err == nil || !strings.Contains(err.Error(), "is claimed by both") {
				t.Errorf("%q: got %v", prefixes, err)
			}
		}
	})
	t.Run("bad prefix", func(t *testing.T) {
		_, err := adapt(t, ":8000 {\n metrics_gateway {\n proxy {\n default http://a:1\n }\n prometheus_http_prefix prometheus\n }\n}")
		if err == nil || !strings.Contains(err.Error(), `prometheus_http_prefix: "prometheus" must start with /`) {
			t.Errorf("got %v", err)
		}
	})
}

// TestJSONLoadTimeErrors checks the same mistakes in JSON configs, which
// Caddy reports when it provisions the module (caddy validate, POST /load).
func TestJSONLoadTimeErrors(t *testing.T) {
	cases := []struct {
		name, handler, want string
	}{
		{"unknown component", `{"proxy": {"default": {"url": "http://a:1"}, "querier": {"url": "http://b:1"}}}`, `unknown field "querier"`},
		{"URL without host", `{"proxy": {"default": {"url": "http:///x"}}}`, `proxy.default.url: "http:///x" has no host`},
		{"unsupported scheme", `{"proxy": {"default": {"url": "grpc://a:1"}}}`, `proxy.default.url: "grpc://a:1": unsupported scheme "grpc"`},
		{"dns without port", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d"}}}`, `proxy.distributor.url: target "dns:///d": missing port in "d"`},
		{"empty proxy", `{"proxy": {}}`, "proxy: no backends configured; set at least proxy.default"},
		{"no default", `{"proxy": {"ruler": {"url": "http://a:1"}}}`, "proxy.default: required"},
		{"bad prefix", `{"proxy": {"default": {"url": "http://a:1"}}, "alertmanager_http_prefix": "/am/"}`, `alertmanager_http_prefix: "/am/" must not end with /`},
		{"prefix no request matches", `{"proxy": {"default": {"url": "http://a:1"}}, "prometheus_http_prefix": "/a/../prometheus"}`, `prometheus_http_prefix: "/a/../prometheus" must be a canonical path`},
		{"colliding prefixes", `{"proxy": {"default": {"url": "http://a:1"}}, "alertmanager_http_prefix": "/p", "prometheus_http_prefix": "/p"}`, "route /p is claimed by both"},
		{"grpc options on http", `{"proxy": {"default": {"url": "http://a:1", "grpc": {"retries": 1}}}}`, "proxy.default.grpc: only valid with a dns: URL"},
		{"reverse_proxy on dns", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d:9095", "reverse_proxy": {}}}}`, "proxy.distributor.reverse_proxy: only valid with HTTP URLs"},
		{"bad reverse_proxy", `{"proxy": {"default": {"url": "http://a:1", "reverse_proxy": {"bogus": 1}}}}`, `proxy.default: reverse_proxy: json: unknown field "bogus"`},
		{"upstreams besides url", `{"proxy": {"default": {"url": "http://a:1", "reverse_proxy": {"upstreams": [{"dial": "b:2"}]}}}}`, "proxy.default: reverse_proxy: upstreams come from url"},
		{"tls on http url", `{"proxy": {"default": {"url": "http://a:1", "reverse_proxy": {"transport": {"protocol": "http", "tls": {}}}}}}`, "proxy.default: reverse_proxy.transport: tls is set but the URL is http://"},
		{"invalid literal tenant", `{"proxy": {"default": {"url": "http://a:1"}}, "tenant": "a|b"}`, `tenant: tenant ID 'a|b' contains unsupported character '|'`},
		{"keepalive too often", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d:9095", "grpc": {"keepalive_time": "5s"}}}}`, "keepalive time 5s: must be at least 10s"},
		{"unknown lb_policy", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d:9095", "grpc": {"lb_policy": "random"}}}}`, `proxy.distributor.grpc: lb_policy "random": must be round_robin or least_conn`},
		{"negative max_fails", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d:9095", "grpc": {"fail_duration": "5s", "max_fails": -1}}}}`, "proxy.distributor.grpc: max_fails -1: must not be negative"},
		{"negative min_ready", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d:9095 dns:///e:9095", "grpc": {"min_ready": -1}}}}`, "proxy.distributor.grpc.min_ready -1: must not be negative"},
		{"dns mixed with http", `{"proxy": {"default": {"url": "dns:///d:9095 http://a:1"}}}`, `proxy.default.url: "http://a:1": dns: and HTTP URLs cannot be mixed in one backend`},
		{"fail_duration without unit", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d:9095", "grpc": {"fail_duration": "5"}}}}`, `missing unit in duration "5"`},
		{"bad unhealthy_status", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d:9095", "grpc": {"fail_duration": "5s", "unhealthy_status": [7]}}}}`, "proxy.distributor.grpc: unhealthy_status 7: must be a status 100-599 or a class 1-5"},
		{"health without fail_duration", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d:9095", "grpc": {"max_fails": 3}}}}`, "proxy.distributor.grpc: max_fails, unhealthy_status, unhealthy_latency: need fail_duration"},
		{"invalid default tenant", `{"proxy": {"default": {"url": "http://a:1"}}, "default_tenant": "a|b"}`, `default_tenant: tenant ID 'a|b' contains unsupported character '|'`},
		{"empty-ish default tenant", `{"proxy": {"default": {"url": "http://a:1"}}, "default_tenant": ".."}`, `default_tenant: tenant ID is '.' or '..'`},
		{"too many retries", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d:9095", "grpc": {"retries": 9}}}}`, "proxy.distributor.grpc: retries 9: must be 0-4"},
		{"cert without key", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d:9095", "grpc": {"tls": {"key": "k.pem"}}}}}`, "proxy.distributor.grpc: tls: cert and key must be given together"},
		{"empty access_policies", `{"proxy": {"default": {"url": "http://a:1"}}, "access_policies": {}}`, "access_policies: no policy, file or oidc: every request would be refused"},
		{"HTTP URL twice", `{"proxy": {"default": {"url": "http://a:1 a:1"}}}`, `proxy.default.url: "a:1" is listed twice`},
		// Each write would reach the same cluster twice.
		{"mirror twice", `{"proxy": {"default": {"url": "http://a:1"}}, "mirrors": [{"url": ["dns:///m:9095"]}, {"url": ["dns:///m:9095"], "percent": 50}]}`,
			"mirrors[1].url: dns:///m:9095 is mirrors[0]'s too: each write would reach it twice"},
		{"mirror of the distributor itself", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns:///d:9095"}}, "mirrors": [{"url": ["dns:///d:9095"]}]}`,
			"mirrors[0].url: dns:///d:9095 is proxy.distributor's too"},
		{"mirror of the default backend", `{"proxy": {"default": {"url": "http://a:1"}}, "mirrors": [{"url": ["h2c://a:1"]}]}`,
			"mirrors[0].url: a:1 is proxy.default's too"},
		{"empty mirror tenants", `{"proxy": {"default": {"url": "http://a:1"}}, "mirrors": [{"url": ["dns:///m:9095"], "tenants": []}]}`,
			"mirrors[0].tenants: empty; leave it out to mirror every tenant"},
		{"mirror max_buffered_bytes", `{"proxy": {"default": {"url": "http://a:1"}}, "mirrors": [{"url": ["dns:///m:9095"], "max_buffered_bytes": 1073741824}]}`,
			"mirrors[0].max_buffered_bytes: a copy holds the request's own body"},
		{"mirror of the distributor, spelled another way", `{"proxy": {"default": {"url": "http://a:1"}, "distributor": {"url": "dns://10.0.0.1/d:9095"}}, "mirrors": [{"url": ["dns://10.0.0.1:53/d:9095"]}]}`,
			"is proxy.distributor's too"},
		// "*" is every tenant in access_policies, but a tenant ID here.
		{"mirror tenants *", `{"proxy": {"default": {"url": "http://a:1"}}, "mirrors": [{"url": ["dns:///m:9095"], "tenants": ["*"]}]}`,
			`mirrors[0].tenants: "*" would mirror only a tenant named "*"`},
		// tenant sets every request's tenant: default_tenant would never apply.
		{"tenant and default_tenant", `{"proxy": {"default": {"url": "http://a:1"}}, "tenant": "{http.auth.user.id}", "default_tenant": "anonymous"}`,
			"default_tenant: not used together with tenant"},
		// Policies without a token, and no file or oidc: every request 401.
		{"access policies nobody can use", `{"proxy": {"default": {"url": "http://a:1"}}, "access_policies": {"policies": [{"name": "team-a", "tenants": ["team-a"], "scopes": ["metrics:write"]}]}}`,
			"access_policies: no policy has a token, and there is no file or oidc"},
		{"retry_after off with bounds", `{"proxy": {"default": {"url": "http://a:1"}}, "retry_after": {"off": true, "min": "500ms", "max": "1ms"}}`,
			"retry_after: off sends no Retry-After: min and max are not used with it"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			handler := strings.Replace(c.handler, "{", `{"handler": "metrics_gateway", `, 1)
			cfgJSON := `{"admin": {"disabled": true}, "apps": {"http": {"servers": {"s": {"listen": ["127.0.0.1:0"], "routes": [{"handle": [` + handler + `]}]}}}}}`
			var cfg caddy.Config
			if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
				t.Fatal(err)
			}
			err := caddy.Validate(&cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v\nwant it to contain %q", err, c.want)
			}
		})
	}
}

// TestExamplesAgree checks that examples/caddy.json is what
// examples/Caddyfile adapts to, so the two documented forms never drift.
func TestExamplesAgree(t *testing.T) {
	caddyfile, err := os.ReadFile("../examples/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	wantJSON, err := os.ReadFile("../examples/caddy.json")
	if err != nil {
		t.Fatal(err)
	}
	adapted, err := adapt(t, string(caddyfile))
	if err != nil {
		t.Fatalf("examples/Caddyfile: %v", err)
	}
	var got, want any
	if err := json.Unmarshal(adapted, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(wantJSON, &want); err != nil {
		t.Fatalf("examples/caddy.json: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		pretty, _ := json.MarshalIndent(got, "", "\t")
		t.Errorf("examples/caddy.json differs from the adapted examples/Caddyfile; adapted:\n%s", pretty)
	}
	// And the JSON provisions: every URL in it is valid.
	var cfg caddy.Config
	if err := json.Unmarshal(wantJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Admin = &caddy.AdminConfig{Disabled: true}
	if err := caddy.Validate(&cfg); err != nil {
		t.Errorf("examples/caddy.json does not validate: %v", err)
	}
}

// TestMirrorAdapts: a mirror block adapts to the JSON the module reads,
// dns: options included, and bad values fail naming the field.
func TestMirrorAdapts(t *testing.T) {
	h := gatewayHandler(t, `
:8000 {
	metrics_gateway {
		proxy {
			default http://mimir:8080
		}
		mirror dns:///mimir-new-distributor-headless.mimir-new.svc:9095 {
			tenants       team-a team-b
			percent       50
			max_in_flight 128
			timeout       5s
			lb_policy     least_conn
			keepalive     30s
		}
		mirror http://mimir-new-gateway:8080 http://mimir-new-gateway-2:8080
	}
}`)
	want := []any{
		map[string]any{"url": []any{"dns:///mimir-new-distributor-headless.mimir-new.svc:9095"}, "tenants": []any{"team-a", "team-b"},
			"percent": float64(50), "max_in_flight": float64(128), "timeout": float64(5e9), "lb_policy": "least_conn", "keepalive_time": float64(30e9)},
		map[string]any{"url": []any{"http://mimir-new-gateway:8080", "http://mimir-new-gateway-2:8080"}},
	}
	if !reflect.DeepEqual(h["mirrors"], want) {
		got, _ := json.MarshalIndent(h["mirrors"], "", "  ")
		t.Errorf("adapted mirrors:\n%s", got)
	}
	for _, c := range []struct{ name, block, want string }{
		{"no URL", "mirror", "mirror: missing URL"},
		{"percent over 100", "mirror dns:///m:9095 {\n percent 101\n }", "mirrors[0]: percent 101: must be 0 to 100"},
		{"negative max_in_flight", "mirror dns:///m:9095 {\n max_in_flight -1\n }", "mirrors[0]: max_in_flight -1: must not be negative"},
		{"bad tenant", "mirror dns:///m:9095 {\n tenants team/a\n }", `mirrors[0].tenants: "team/a": tenant ID 'team/a' contains unsupported character '/'`},
		{"dns option on an HTTP mirror", "mirror http://m:8080 {\n lb_policy least_conn\n }", `mirrors[0]: {"lb_policy":"least_conn"} are options of dns: mirrors`},
		{"bad dns option", "mirror dns:///m:9095 {\n retries 9\n }", "mirrors[0]: retries 9: must be 0-4"},
		{"unknown option", "mirror dns:///m:9095 {\n bogus 1\n }", `mirror: unrecognized option "bogus"`},
		{"bad URL", "mirror ftp://m:21", `mirrors[0].url: "ftp://m:21": unsupported scheme "ftp"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := adapt(t, ":8000 {\n metrics_gateway {\n proxy {\n default http://a:1\n }\n "+c.block+"\n }\n}")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v\nwant it to contain %q", err, c.want)
			}
		})
	}
}
