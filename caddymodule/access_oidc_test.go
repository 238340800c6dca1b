package caddymodule_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/caddymodule"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// idpClaims are valid claims of the provider naming policy.
func idpClaims(idp *standin.IdP, policy any) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss":          idp.URL(),
		"aud":          "metrics-gateway",
		"sub":          "alice",
		"iat":          now.Unix(),
		"exp":          now.Add(time.Hour).Unix(),
		"mimir_policy": policy,
	}
}

// TestAccessOIDC: JWTs of a local identity provider (discovery and key set
// on loopback, tokens signed by the test) through a real Caddy.
func TestAccessOIDC(t *testing.T) {
	t.Parallel() // Caddy runs in a process of its own
	k1, k2, stray := standin.NewECKey("k1"), standin.NewECKey("k2"), standin.NewECKey("stray")
	idp := standin.StartIdP(t, k1)
	s := startAccessProcess(t, fmt.Sprintf(`access_policies {
			policy grafana {
				tenants team-a team-b
				scopes metrics:read
			}
			policy team-a-writer {
				tenants team-a
				scopes metrics:write
			}
			oidc {
				issuer %s
				audience metrics-gateway
				policy_claim mimir_policy
			}
		}`, idp.URL()), "")
	c := s.c

	// Valid: the token's policy applies, as a Bearer token or as the Basic
	// password.
	tok := k1.Sign(t, idpClaims(idp, "grafana"))
	for _, cr := range []cred{bearer(tok, "team-b"), basic("team-b", tok)} {
		a := send(t, c.Client, "GET", "/prometheus/api/v1/query", cr)
		if a.status != 200 || a.header.Get("X-MG-Policy") != "grafana" {
			t.Fatalf("valid JWT: %d %q", a.status, a.body)
		}
		if v := a.echo.Header.Values("X-Scope-OrgID"); len(v) != 1 || v[0] != "team-b" {
			t.Errorf("the backend got X-Scope-OrgID %q", v)
		}
		if _, ok := a.echo.Header["Authorization"]; ok {
			t.Error("the JWT reached the backend")
		}
	}
	if a := send(t, c.Client, "GET", "/prometheus/api/v1/query", bearer(tok, "team-c")); a.status != 403 {
		t.Errorf("valid JWT, tenant not granted: %d %q", a.status, a.body)
	}
	// A list of policies; the one-tenant default of team-a-writer.
	push := k1.Sign(t, idpClaims(idp, []string{"team-a-writer", "unknown"}))
	if a := send(t, c.Client, "POST", "/api/v1/push", bearer(push)); a.status != 200 || a.header.Get("X-MG-Policy") != "team-a-writer" {
		t.Errorf("push with a JWT: %d %q", a.status, a.body)
	}
	if md, _ := s.cl.lastCall(t); len(md) != 1 || md[0] != "team-a" {
		t.Errorf("gRPC metadata %q", md)
	}

	before := s.served()
	claims := func(mod func(map[string]any)) map[string]any {
		c := idpClaims(idp, "grafana")
		mod(c)
		return c
	}
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT","kid":"k1"}`))
	payload, _ := json.Marshal(idpClaims(idp, "grafana"))
	for name, tok := range map[string]string{
		"wrong aud": k1.Sign(t, claims(func(c map[string]any) { c["aud"] = "someone-else" })),
		"wrong iss": k1.Sign(t, claims(func(c map[string]any) { c["iss"] = "https://idp.example.com" })),
		"expired":   k1.Sign(t, claims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Minute).Unix() })),
		// Issued before the keys were fetched: not of a key published
		// since (which would be 503 until the next fetch).
		"unknown key": stray.Sign(t, claims(func(c map[string]any) { c["iat"] = time.Now().Add(-time.Minute).Unix() })),
		// Claims to be k1, signed by another key.
		"key of another kid": stray.SignAs(t, "k1", idpClaims(idp, "grafana")),
		"alg none":           header + "." + base64.RawURLEncoding.EncodeToString(payload) + ".",
	} {
		a := send(t, c.Client, "GET", "/prometheus/api/v1/query", bearer(tok, "team-b"))
		if a.status != 401 || a.header.Get("WWW-Authenticate") == "" || a.body != "invalid token\n" {
			t.Errorf("%s: %d %v %q", name, a.status, a.header, a.body)
		}
	}
	if a := send(t, c.Client, "GET", "/prometheus/api/v1/query", bearer(k1.Sign(t, idpClaims(idp, "nobody")), "team-b")); a.status != 403 {
		t.Errorf("a JWT naming no configured policy: %d %q", a.status, a.body)
	}
	if n := s.served() - before; n != 0 {
		t.Errorf("%d refused requests reached a backend", n)
	}

	// Key rotation: the provider signs with a new key and withdraws the
	// old one. Tokens with the new key ID make the gateway fetch the keys
	// again (at most every 10 s, so this may take that long).
	idp.Publish(k2)
	tok2 := k2.Sign(t, idpClaims(idp, "grafana"))
	start := time.Now()
	standin.WaitFor(t, 20*time.Second, "a token of the new key to work", func() bool {
		return send(t, c.Client, "GET", "/prometheus/api/v1/query", bearer(tok2, "team-a")).status == 200
	})
	t.Logf("the new key worked after %v", time.Since(start).Round(time.Millisecond))
	withdrawn := idpClaims(idp, "grafana")
	withdrawn["iat"] = start.Add(-time.Minute).Unix() // before the fetch that found k1 gone
	if a := send(t, c.Client, "GET", "/prometheus/api/v1/query", bearer(k1.Sign(t, withdrawn), "team-a")); a.status != 401 {
		t.Errorf("a token of the withdrawn key: %d %q", a.status, a.body)
	}

	code, body, err := c.AdminGet("/metrics_gateway/policies")
	var view []caddymodule.PoliciesStatus
	if err != nil || code != 200 || json.Unmarshal(body, &view) != nil || len(view) != 1 || view[0].OIDC == nil {
		t.Fatalf("GET /metrics_gateway/policies: %d %v %s", code, err, body)
	}
	if o := view[0].OIDC; o.Issuer != idp.URL() || o.Keys != 1 || o.JWKSURI != idp.URL()+"/keys" || o.PolicyClaim != "mimir_policy" {
		t.Errorf("OIDC status: %+v", o)
	}
	// tok2 at least is remembered (by hash), and the gauge says so.
	if n, g := view[0].OIDC.CachedTokens, metricValue(t, c, "metrics_gateway_auth_jwt_cache_entries"); n < 1 || g != float64(n) {
		t.Errorf("%d cached tokens in the view, gauge %v", n, g)
	}
	if strings.Contains(string(body), tok) || strings.Contains(string(body), tok2) {
		t.Error("the policies view shows a token")
	}
}
