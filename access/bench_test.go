package access

import (
	"fmt"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"net/http"
	"testing"
)

// benchConfig has 1000 policies of one token each, like a large deployment.
func benchConfig() Config {
	cfg := decisionConfig()
	for i := range 1000 {
		cfg.Policies = append(cfg.Policies, Policy{
			Name:    fmt.Sprintf("bench-%d", i),
			Tenants: []string{fmt.Sprintf("tenant-%d", i)},
			Scopes:  []string{"metrics:write", "metrics:read"},
			Tokens:  []Token{{Hash: HashToken(fmt.Sprintf("bench-token-%043d", i))}},
		})
	}
	return cfg
}

func benchGuard(b *testing.B, cfg Config, opts Options) *Guard {
	if opts.Metrics == nil {
		opts.Metrics = NewRequestsCounter()
	}
	return newTestGuard(b, cfg, opts)
}

func runDecide(b *testing.B, g *Guard, r *http.Request, scope Scope) {
	b.Helper()
	if d := g.Decide(r, scope); !d.Allowed() {
		b.Fatalf("%+v", d)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if d := g.Decide(r, scope); d.Status != 0 {
			b.Fatal(d.Message)
		}
	}
}

// A remote-write request: Basic, tenant as username, a 43-character token.
func BenchmarkDecideBasic(b *testing.B) {
	g := benchGuard(b, benchConfig(), Options{})
	runDecide(b, g, basicReq("tenant-500", fmt.Sprintf("bench-token-%043d", 500)), ScopeMetricsWrite)
}

func BenchmarkDecideBearer(b *testing.B) {
	g := benchGuard(b, benchConfig(), Options{})
	runDecide(b, g, bearerReq(fmt.Sprintf("bench-token-%043d", 500), "tenant-500"), ScopeMetricsRead)
}

// BenchmarkDecideJWT: a token seen before (taken from the cache) and, with
// the cache off, one whose signature is checked.
func BenchmarkDecideJWT(b *testing.B) {
	for _, key := range []standin.SigningKey{rsaKey1(), ecKey()} {
		for _, cache := range []string{"cached", "verified"} {
			b.Run(string(key.Alg)+"/"+cache, func(b *testing.B) {
				clock := newFakeClock(testStart)
				is := standin.StartIdP(b, key)
				cfg := benchConfig()
				cfg.OIDC = &OIDCConfig{Issuer: is.URL(), Audience: "metrics-gateway"}
				g := benchGuard(b, cfg, Options{Now: clock.Now, HTTPClient: is.Srv.Client()})
				if cache == "verified" {
					g.oidc.cache.close() // remembers nothing from now on
				}
				runDecide(b, g, bearerReq(key.Sign(b, claims(is, clock, "bench-500")), "tenant-500"), ScopeMetricsWrite)
			})
		}
	}
}

// The hot path's allocation budget: at most 2 per decision for a static
// token (Basic: the tenant string; Bearer: none).
func TestDecideAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocations")
	}
	g := newTestGuard(t, benchConfig(), Options{Metrics: NewRequestsCounter()})
	for name, c := range map[string]struct {
		r     *http.Request
		scope Scope
		max   float64
	}{
		"basic":                 {basicReq("tenant-500", fmt.Sprintf("bench-token-%043d", 500)), ScopeMetricsWrite, 1},
		"bearer":                {bearerReq(fmt.Sprintf("bench-token-%043d", 500), "tenant-500"), ScopeMetricsRead, 0},
		"bearer default tenant": {bearerReq(fmt.Sprintf("bench-token-%043d", 500)), ScopeMetricsRead, 0},
		"basic multi-tenant":    {basicReq("team-b|team-c", "token-b"), ScopeMetricsRead, 1},
	} {
		if d := g.Decide(c.r, c.scope); !d.Allowed() {
			t.Fatalf("%s: %+v", name, d)
		}
		if n := testing.AllocsPerRun(100, func() { g.Decide(c.r, c.scope) }); n > c.max {
			t.Errorf("%s: %v allocations per decision, want at most %v", name, n, c.max)
		}
	}
}
