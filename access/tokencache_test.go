package access

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
	"weak"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// cachingGuard is oidcGuard with the cache's gauge.
func cachingGuard(t *testing.T) (*Guard, *standin.IdP, *fakeClock, prometheus.Gauge) {
	clock := newFakeClock(testStart)
	is := standin.StartIdP(t, rsaKey1())
	gauge := NewCachedTokensGauge()
	cfg := decisionConfig()
	cfg.OIDC = &OIDCConfig{Issuer: is.URL(), Audience: "metrics-gateway"}
	return newTestGuard(t, cfg, Options{Now: clock.Now, HTTPClient: is.Srv.Client(), CachedTokens: gauge}), is, clock, gauge
}

// TestOIDCTokenCache: a JWT sent again is not verified again, and the
// cache changes no decision: expiry, a withdrawn key and the policies in
// force apply to a remembered token as to a new one.
func TestOIDCTokenCache(t *testing.T) {
	g, is, clock, gauge := cachingGuard(t)
	checks := &g.oidc.keys.signatureChecks

	c := claims(is, clock, "team-a")
	c["exp"] = clock.Now().Add(3 * time.Hour).Unix()
	tok := rsaKey1().Sign(t, c)
	for i := 0; i < 3; i++ {
		if d := g.Decide(bearerReq(tok), ScopeMetricsWrite); !d.Allowed() || d.Tenant != "team-a" || d.Subject != "user-1" {
			t.Fatalf("decision %d: %+v", i, d)
		}
	}
	if n := checks.Load(); n != 1 {
		t.Fatalf("%d signature checks for one token sent 3 times, want 1", n)
	}
	if got, st := testutil.ToFloat64(gauge), g.Status().OIDC; got != 1 || st.CachedTokens != 1 {
		t.Fatalf("gauge %v, status %d cached tokens, want 1", got, st.CachedTokens)
	}
	// Scope and tenant are still decided per request.
	if d := g.Decide(bearerReq(tok, "team-b"), ScopeMetricsWrite); d.Status != 403 {
		t.Fatalf("other tenant: %+v", d)
	}

	// The policies in force decide what the remembered claim grants.
	other := decisionConfig().Policies[1:] // without team-a
	if res := g.oidc.verify(context.Background(), []byte(tok), compile(other, nil, nil)); res.grant != nil || res.subject != "user-1" {
		t.Fatalf("policy team-a removed: %+v", res)
	}

	// decide checks tok's status (0: allowed) and, when want > 0, the
	// signature checks made so far.
	decide := func(what, tok string, status int, want int64) {
		t.Helper()
		if d := g.Decide(bearerReq(tok), ScopeMetricsWrite); d.Status != status {
			t.Fatalf("%s: %+v, want status %d", what, d, status)
		}
		if n := checks.Load(); want > 0 && n != want {
			t.Fatalf("%s: %d signature checks so far, want %d", what, n, want)
		}
	}
	signed := func(key standin.SigningKey, valid time.Duration) string {
		c := claims(is, clock, "team-a")
		c["exp"] = clock.Now().Add(valid).Unix()
		return key.Sign(t, c)
	}

	// The key is withdrawn and a token of the new key makes the gateway
	// fetch the keys again, well within the hour: the remembered token was
	// verified with the old set, so it is checked again, and refused.
	is.Publish(rsaKey2())
	clock.Add(minRefetchInterval)
	decide("a token of the new key", signed(rsaKey2(), time.Hour), 0, 2)
	decide("withdrawn key, keys fetched again", tok, 401, 3)

	// The key is withdrawn with no token to tell: once the keys are an hour
	// old, the remembered token is checked again (the set is fetched again)
	// and refused.
	tok = signed(rsaKey2(), 3*time.Hour)
	decide("a token of the new key", tok, 0, 4)
	is.Publish(rsaKey1())
	clock.Add(keyMaxAge)
	decide("withdrawn key, keys an hour old", tok, 401, 5)

	// A remembered token past its exp is refused.
	tok = signed(rsaKey1(), 10*time.Minute)
	decide("a token of the current key", tok, 0, 0)
	clock.Add(11 * time.Minute) // the keys are still fresh
	decide("expired token", tok, 401, 0)

	g.Close()
	if got := testutil.ToFloat64(gauge); got != 0 {
		t.Fatalf("gauge %v after Close, want 0", got)
	}
}

// TestOIDCTokenCacheBound pushes more distinct tokens than the cache holds:
// it stays within its bound (gauge and status agree), every token is
// still allowed, and a token let go is verified again.
func TestOIDCTokenCacheBound(t *testing.T) {
	g, is, clock, gauge := cachingGuard(t)
	const max = 16
	g.oidc.cache.max = max

	toks := make([]string, 100)
	for i := range toks {
		c := claims(is, clock, "team-a")
		c["sub"] = fmt.Sprintf("client-%d", i)
		toks[i] = rsaKey1().Sign(t, c)
		if d := g.Decide(bearerReq(toks[i]), ScopeMetricsWrite); !d.Allowed() {
			t.Fatalf("token %d: %+v", i, d)
		}
		if n := g.oidc.cache.len(); n > max {
			t.Fatalf("after %d tokens: %d cached, bound %d", i+1, n, max)
		}
	}
	n := g.oidc.cache.len()
	if got := testutil.ToFloat64(gauge); got != float64(n) || g.Status().OIDC.CachedTokens != n || n == 0 {
		t.Fatalf("gauge %v, status %d, cache %d", got, g.Status().OIDC.CachedTokens, n)
	}
	checks := g.oidc.keys.signatureChecks.Load()
	if d := g.Decide(bearerReq(toks[len(toks)-1]), ScopeMetricsWrite); !d.Allowed() || g.oidc.keys.signatureChecks.Load() != checks {
		t.Fatalf("the newest token: %+v, %d signature checks (was %d)", d, g.oidc.keys.signatureChecks.Load(), checks)
	}
	if d := g.Decide(bearerReq(toks[0]), ScopeMetricsWrite); !d.Allowed() || g.oidc.keys.signatureChecks.Load() != checks+1 {
		t.Fatalf("the oldest token: %+v, %d signature checks (was %d)", d, g.oidc.keys.signatureChecks.Load(), checks)
	}

	// Full, partly of tokens that expired: those go first, the others
	// stay (up to 3/4 of the bound, the oldest going first).
	valid := g.oidc.cache.len()
	for i := 0; g.oidc.cache.len() < max && i < max; i++ {
		c := claims(is, clock, "team-a")
		c["sub"] = fmt.Sprintf("short-lived-%d", i)
		c["exp"] = clock.Now().Add(10 * time.Minute).Unix()
		g.Decide(bearerReq(rsaKey1().Sign(t, c)), ScopeMetricsWrite)
	}
	if n := g.oidc.cache.len(); n != max || valid == max {
		t.Fatalf("%d cached (%d valid), want it full (%d) with some short-lived", n, valid, max)
	}
	clock.Add(11 * time.Minute) // past the short-lived tokens' exp, not the keys' age
	if d := g.Decide(bearerReq(rsaKey1().Sign(t, claims(is, clock, "team-a"))), ScopeMetricsWrite); !d.Allowed() {
		t.Fatalf("%+v", d)
	}
	want := min(valid, max*3/4) + 1
	if n := g.oidc.cache.len(); n != want || testutil.ToFloat64(gauge) != float64(want) {
		t.Fatalf("%d cached (gauge %v), want %d: the expired ones gone, %d valid ones kept, the new one", n, testutil.ToFloat64(gauge), want, want-1)
	}
	// The sweep kept the newest valid tokens: toks[99] and toks[0] (seen
	// again last) and the ones just before them.
	checks = g.oidc.keys.signatureChecks.Load()
	for _, i := range []int{0, 99, 89} {
		if d := g.Decide(bearerReq(toks[i]), ScopeMetricsWrite); !d.Allowed() || g.oidc.keys.signatureChecks.Load() != checks {
			t.Fatalf("token %d, valid and among the newest: %+v, checked again after the sweep", i, d)
		}
	}
}

// TestOIDCLargeTokenNotCached: a token whose policy claim is larger than
// maxCachedTokenBytes (here 1,000 group names) still grants what it names,
// but is verified at every request and never held by the cache.
func TestOIDCLargeTokenNotCached(t *testing.T) {
	g, is, clock, _ := cachingGuard(t)
	groups := []string{"team-a"}
	for i := range 999 {
		groups = append(groups, fmt.Sprintf("group-%05d", i))
	}
	tok := rsaKey1().Sign(t, claims(is, clock, groups))
	for i := range 3 {
		checks := g.oidc.keys.signatureChecks.Load()
		if d := g.Decide(bearerReq(tok), ScopeMetricsWrite); !d.Allowed() || d.Tenant != "team-a" {
			t.Fatalf("send %d: %+v", i+1, d)
		}
		if n := g.oidc.keys.signatureChecks.Load() - checks; n != 1 {
			t.Fatalf("send %d: %d signature checks, want 1 (not cached)", i+1, n)
		}
	}
	if n := g.oidc.cache.len(); n != 0 {
		t.Errorf("%d tokens cached, want 0", n)
	}
	small := rsaKey1().Sign(t, claims(is, clock, "team-a"))
	g.Decide(bearerReq(small), ScopeMetricsWrite)
	if n := g.oidc.cache.len(); n != 1 {
		t.Errorf("a small token: %d cached, want 1", n)
	}
}

// TestOIDCTokenCacheKeptWhenKeysUnchanged: a fetch that finds the same keys
// (here forced by a token with an unknown key ID, as anyone can send)
// keeps the remembered tokens: no client's token is verified again.
func TestOIDCTokenCacheKeptWhenKeysUnchanged(t *testing.T) {
	g, is, clock, _ := cachingGuard(t)
	tok := rsaKey1().Sign(t, claims(is, clock, "team-a"))
	allowWrite(t, g, tok, "first send")
	clock.Add(minRefetchInterval + time.Second)
	fetches := is.Fetches.Load()
	forged := strayKey().SignAs(t, "kid-unknown", claims(is, clock, "team-a"))
	if d := g.Decide(bearerReq(forged), ScopeMetricsWrite); d.Status != 401 {
		t.Fatalf("forged token: %+v", d)
	}
	if n := is.Fetches.Load() - fetches; n != 1 {
		t.Fatalf("%d fetches for the unknown key ID, want 1", n)
	}
	checks := g.oidc.keys.signatureChecks.Load()
	allowWrite(t, g, tok, "after the fetch")
	if n := g.oidc.keys.signatureChecks.Load() - checks; n != 0 {
		t.Errorf("%d signature checks for a remembered token after a fetch of the same keys, want 0", n)
	}
}

// TestRememberedResultKeepsNoSnapshot: a remembered token keeps its result
// for the policies it was last checked against, not that snapshot of every
// policy: a token last used before the policy file changed must not keep
// the old file's thousands of policies in memory.
func TestRememberedResultKeepsNoSnapshot(t *testing.T) {
	policies := []Policy{{Name: "p", Tenants: []string{"team-a"}, Scopes: []string{"metrics:write"}}}
	e := &cachedToken{names: []string{"p"}}
	old := compile(policies, nil, nil)
	if e.result(old, "claim").grant == nil {
		t.Fatal("no grant for the token's policy")
	}
	gone := weak.Make(old)
	old = nil
	for range 3 {
		runtime.GC()
	}
	if gone.Value() != nil {
		t.Error("the remembered result keeps its snapshot of the policies in memory")
	}
	runtime.KeepAlive(e) // the remembered token lives on
}
