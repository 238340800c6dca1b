package caddymodule_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/metrics-gateway/metrics_gateway/caddymodule"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// oidcKey is a signing key of the test's identity provider.
type oidcKey struct {
	kid  string
	priv *ecdsa.PrivateKey
}

func newOIDCKey(t *testing.T, kid string) oidcKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return oidcKey{kid: kid, priv: k}
}

// sign makes a compact JWS of claims, ES256, with the key's ID.
func (k oidcKey) sign(t *testing.T, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: k.priv, KeyID: k.kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(claims)
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// testIdP is an OpenID provider on loopback: discovery and key set, with
// the keys it publishes replaceable.
type testIdP struct {
	srv  *httptest.Server
	mu   sync.Mutex
	keys []oidcKey
}

func startTestIdP(t *testing.T, keys ...oidcKey) *testIdP {
	idp := &testIdP{keys: keys}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": idp.srv.URL, "jwks_uri": idp.srv.URL + "/keys"})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		idp.mu.Lock()
		var set jose.JSONWebKeySet
		for _, k := range idp.keys {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: &k.priv.PublicKey, KeyID: k.kid, Algorithm: string(jose.ES256), Use: "sig"})
		}
		idp.mu.Unlock()
		_ = json.NewEncoder(w).Encode(set)
	})
	idp.srv = httptest.NewServer(mux) // 127.0.0.1, a free port
	t.Cleanup(idp.srv.Close)
	return idp
}

func (idp *testIdP) publish(keys ...oidcKey) {
	idp.mu.Lock()
	idp.keys = keys
	idp.mu.Unlock()
}

// claims are valid claims of the provider naming policy.
func (idp *testIdP) claims(policy any) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss":          idp.srv.URL,
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
	k1, k2, stray := newOIDCKey(t, "k1"), newOIDCKey(t, "k2"), newOIDCKey(t, "stray")
	idp := startTestIdP(t, k1)
	s := startAccess(t, fmt.Sprintf(`access_policies {
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
		}`, idp.srv.URL), "")
	c := s.c

	// Valid: the token's policy applies, as a Bearer token or as the Basic
	// password.
	tok := k1.sign(t, idp.claims("grafana"))
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
	push := k1.sign(t, idp.claims([]string{"team-a-writer", "unknown"}))
	if a := send(t, c.Client, "POST", "/api/v1/push", bearer(push)); a.status != 200 || a.header.Get("X-MG-Policy") != "team-a-writer" {
		t.Errorf("push with a JWT: %d %q", a.status, a.body)
	}
	if md, _ := s.cl.lastCall(t); len(md) != 1 || md[0] != "team-a" {
		t.Errorf("gRPC metadata %q", md)
	}

	before := s.served()
	claims := func(mod func(map[string]any)) map[string]any {
		c := idp.claims("grafana")
		mod(c)
		return c
	}
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT","kid":"k1"}`))
	payload, _ := json.Marshal(idp.claims("grafana"))
	for name, tok := range map[string]string{
		"wrong aud":   k1.sign(t, claims(func(c map[string]any) { c["aud"] = "someone-else" })),
		"wrong iss":   k1.sign(t, claims(func(c map[string]any) { c["iss"] = "https://idp.example.com" })),
		"expired":     k1.sign(t, claims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Minute).Unix() })),
		"unknown key": stray.sign(t, idp.claims("grafana")),
		"key of another kid": func() string {
			k := stray
			k.kid = "k1" // claims to be k1, signed by another key
			return k.sign(t, idp.claims("grafana"))
		}(),
		"alg none": header + "." + base64.RawURLEncoding.EncodeToString(payload) + ".",
	} {
		a := send(t, c.Client, "GET", "/prometheus/api/v1/query", bearer(tok, "team-b"))
		if a.status != 401 || a.header.Get("WWW-Authenticate") == "" || a.body != "invalid token\n" {
			t.Errorf("%s: %d %v %q", name, a.status, a.header, a.body)
		}
	}
	if a := send(t, c.Client, "GET", "/prometheus/api/v1/query", bearer(k1.sign(t, idp.claims("nobody")), "team-b")); a.status != 403 {
		t.Errorf("a JWT naming no configured policy: %d %q", a.status, a.body)
	}
	if n := s.served() - before; n != 0 {
		t.Errorf("%d refused requests reached a backend", n)
	}

	// Key rotation: the provider signs with a new key and withdraws the
	// old one. Tokens with the new key ID make the gateway fetch the keys
	// again (at most every 10 s, so this may take that long).
	idp.publish(k2)
	tok2 := k2.sign(t, idp.claims("grafana"))
	start := time.Now()
	standin.WaitFor(t, 20*time.Second, "a token of the new key to work", func() bool {
		return send(t, c.Client, "GET", "/prometheus/api/v1/query", bearer(tok2, "team-a")).status == 200
	})
	t.Logf("the new key worked after %v", time.Since(start).Round(time.Millisecond))
	if a := send(t, c.Client, "GET", "/prometheus/api/v1/query", bearer(k1.sign(t, idp.claims("grafana")), "team-a")); a.status != 401 {
		t.Errorf("a token of the withdrawn key: %d %q", a.status, a.body)
	}

	code, body, err := c.AdminGet("/metrics_gateway/policies")
	var view []caddymodule.PoliciesStatus
	if err != nil || code != 200 || json.Unmarshal(body, &view) != nil || len(view) != 1 || view[0].OIDC == nil {
		t.Fatalf("GET /metrics_gateway/policies: %d %v %s", code, err, body)
	}
	if o := view[0].OIDC; o.Issuer != idp.srv.URL || o.Keys != 1 || o.JWKSURI != idp.srv.URL+"/keys" || o.PolicyClaim != "mimir_policy" {
		t.Errorf("OIDC status: %+v", o)
	}
	if strings.Contains(string(body), tok) || strings.Contains(string(body), tok2) {
		t.Error("the policies view shows a token")
	}
}
