package access

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The keys of the tests' identity provider (standin.IdP).
var (
	rsaKey1 = sync.OnceValue(func() standin.SigningKey { return standin.NewRSAKey("rsa-1") })
	rsaKey2 = sync.OnceValue(func() standin.SigningKey { return standin.NewRSAKey("rsa-2") })
	ecKey   = sync.OnceValue(func() standin.SigningKey { return standin.NewECKey("ec-1") })
	// strayKey is published nowhere.
	strayKey = sync.OnceValue(func() standin.SigningKey { return standin.NewRSAKey("stray") })
)

// oidcGuard is a guard with decisionConfig's policies and the issuer.
func oidcGuard(t testing.TB, is *standin.IdP, clock *fakeClock, mod func(*Config)) *Guard {
	cfg := decisionConfig()
	cfg.OIDC = &OIDCConfig{Issuer: is.URL(), Audience: "metrics-gateway"}
	if mod != nil {
		mod(&cfg)
	}
	return newTestGuard(t, cfg, Options{Now: clock.Now, HTTPClient: is.Srv.Client()})
}

// claims returns valid claims for the issuer at the clock's time.
func claims(is *standin.IdP, clock *fakeClock, policy any) map[string]any {
	now := clock.Now()
	c := map[string]any{
		"iss": is.URL(),
		"aud": []string{"metrics-gateway", "other"},
		"sub": "user-1",
		"iat": now.Unix(),
		"nbf": now.Add(-time.Minute).Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}
	if policy != nil {
		c[DefaultPolicyClaim] = policy
	}
	return c
}

func TestOIDCAllowed(t *testing.T) {
	clock := newFakeClock(testStart)
	is := standin.StartIdP(t, rsaKey1(), ecKey())
	vec := NewRequestsCounter()
	cfg := decisionConfig()
	cfg.OIDC = &OIDCConfig{Issuer: is.URL(), Audience: "metrics-gateway"}
	g := newTestGuard(t, cfg, Options{Now: clock.Now, HTTPClient: is.Srv.Client(), Metrics: vec})

	// RS256, one policy, the one-tenant default.
	tok := rsaKey1().Sign(t, claims(is, clock, "team-a"))
	d := g.Decide(bearerReq(tok), ScopeMetricsWrite)
	if !d.Allowed() || d.Tenant != "team-a" || d.Policy != "team-a" || d.Subject != "user-1" {
		t.Fatalf("%+v", d)
	}
	if d := g.Decide(bearerReq(tok, "team-b"), ScopeMetricsWrite); d.Status != 403 || d.Policy != "team-a" {
		t.Fatalf("%+v", d)
	}

	// ES256, as the Basic password, with the tenant as username.
	tok = ecKey().Sign(t, claims(is, clock, []string{"team-a"}))
	if d := g.Decide(basicReq("team-a", tok), ScopeMetricsRead); !d.Allowed() || d.Tenant != "team-a" {
		t.Fatalf("%+v", d)
	}

	// A list: the union of the known policies, in configuration order.
	tok = rsaKey1().Sign(t, claims(is, clock, []any{"ops", "nope", "multi", 7}))
	d = g.Decide(bearerReq(tok, "team-b"), ScopeMetricsWrite) // metrics:write from multi
	if !d.Allowed() || d.Policy != "multi+ops" {
		t.Fatalf("%+v", d)
	}
	if d := g.Decide(bearerReq(tok, "anyone"), ScopeAdmin); !d.Allowed() { // admin on * from ops
		t.Fatalf("%+v", d)
	}
	// multi's metrics:write does not extend to ops's tenants.
	if d := g.Decide(bearerReq(tok, "anyone"), ScopeMetricsWrite); d.Status != 403 || d.Message != `tenant "anyone" is not granted to this token for metrics:write` {
		t.Fatalf("%+v", d)
	}
	if d := g.Decide(bearerReq(tok, "team-b|anyone"), ScopeMetricsRead); !d.Allowed() { // read: both grant it
		t.Fatalf("%+v", d)
	}
	if d := g.Decide(bearerReq(tok, "team-b"), ScopeAdmin); !d.Allowed() { // ops's admin on "*" covers team-b
		t.Fatalf("%+v", d)
	}
	if d := g.Decide(bearerReq(tok), ScopeMetricsRead); d.Status != 400 { // several tenants: one must be named
		t.Fatalf("%+v", d)
	}
	if got := testutil.ToFloat64(vec.WithLabelValues("+", "allowed")); got != 4 { // several policies, one label
		t.Fatalf("union counted %v", got)
	}

	// No known policy, no claim, a claim of the wrong type: 403.
	for _, c := range []map[string]any{
		claims(is, clock, []string{"nope"}),
		claims(is, clock, nil),
		claims(is, clock, map[string]any{"x": 1}),
	} {
		d := g.Decide(bearerReq(rsaKey1().Sign(t, c), "team-a"), ScopeMetricsRead)
		if d.Status != 403 || d.Policy != "" || d.Message != "the token names no configured access policy" {
			t.Fatalf("%+v", d)
		}
	}
	if n := is.Fetches.Load(); n != 1 {
		t.Fatalf("%d key-set fetches, want 1 (cached)", n)
	}
	if n := is.Discovers.Load(); n != 1 {
		t.Fatalf("%d discoveries", n)
	}
	st := g.Status().OIDC
	if st == nil || st.Keys != 2 || st.JWKSURI != is.URL()+"/keys" || st.Fetches != 1 || st.LastError != "" || st.PolicyClaim != DefaultPolicyClaim {
		t.Fatalf("%+v", st)
	}
}

func TestOIDCNestedClaimAndNoAudience(t *testing.T) {
	clock := newFakeClock(testStart)
	is := standin.StartIdP(t, rsaKey1())
	g := oidcGuard(t, is, clock, func(c *Config) { c.OIDC.Audience = ""; c.OIDC.PolicyClaim = "realm_access.roles" })
	c := claims(is, clock, nil)
	c["aud"] = "anything"
	c["realm_access"] = map[string]any{"roles": []string{"offline_access", "team-a"}}
	if d := g.Decide(bearerReq(rsaKey1().Sign(t, c)), ScopeMetricsWrite); !d.Allowed() || d.Policy != "team-a" {
		t.Fatalf("%+v", d)
	}
}

func TestOIDCRejected(t *testing.T) {
	clock := newFakeClock(testStart)
	is := standin.StartIdP(t, rsaKey1(), ecKey())
	g := oidcGuard(t, is, clock, nil)

	b64 := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	valid := rsaKey1().Sign(t, claims(is, clock, "team-a"))
	parts := strings.Split(valid, ".")
	with := func(k string, v any) map[string]any {
		c := claims(is, clock, "team-a")
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	now := clock.Now()

	tests := []struct {
		name, token, detail string
	}{
		{"wrong audience", rsaKey1().Sign(t, with("aud", "someone-else")), "audience"},
		{"expired", rsaKey1().Sign(t, with("exp", now.Add(-time.Second).Unix())), "expired"},
		{"no exp", rsaKey1().Sign(t, with("exp", nil)), "expired"},
		{"nbf in the future", rsaKey1().Sign(t, with("nbf", now.Add(time.Hour).Unix())), "nbf"},
		{"wrong issuer", rsaKey1().Sign(t, with("iss", "https://evil.example.com")), "issue"},
		{"unknown key", strayKey().Sign(t, claims(is, clock, "team-a")), "verify"},
		{"published kid, other key", strayKey().SignAs(t, "rsa-1", claims(is, clock, "team-a")), "verify"},
		{"no kid, unknown key", strayKey().SignAs(t, "", claims(is, clock, "team-a")), "verify"},
		{"alg none", b64(map[string]string{"alg": "none", "typ": "JWT"}) + "." + parts[1] + ".", "malformed"},
		{"alg none with kid", b64(map[string]string{"alg": "none", "kid": "rsa-1"}) + "." + parts[1] + "." + parts[2], "malformed"},
		{"HS256", func() string {
			s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte("0123456789abcdef0123456789abcdef")}, nil)
			jws, _ := s.Sign([]byte(`{"iss":"` + is.URL() + `"}`))
			out, _ := jws.CompactSerialize()
			return out
		}(), "malformed"},
		{"tampered payload", parts[0] + "." + b64(with("sub", "admin")) + "." + parts[2], "verify"},
		{"ES256 header on an RSA key", func() string {
			// The header says ES256 and the kid of the RSA key.
			h := b64(map[string]string{"alg": "ES256", "kid": "rsa-1"})
			return h + "." + parts[1] + "." + parts[2]
		}(), "verify"},
		// The detail goes to the access log: a header of 100 KB must not.
		{"huge alg", b64(map[string]string{"alg": strings.Repeat("A", 100000)}) + "." + parts[1] + "." + parts[2], "malformed"},
	}
	// The tokens were issued well before the keys are fetched (with the
	// first of them): an unknown key is then invalid, not one the provider
	// may have published since the fetch (TestOIDCNewKeyRightAfterAFetch).
	clock.Add(minRefetchInterval)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, r := range []*http.Request{bearerReq(tt.token, "team-a"), basicReq("team-a", tt.token)} {
				d := g.Decide(r, ScopeMetricsWrite)
				if d.Status != 401 || d.WWWAuthenticate == "" || d.Message != "invalid token" || d.Policy != "" {
					t.Fatalf("%+v", d)
				}
				if !strings.Contains(d.Detail, tt.detail) {
					t.Fatalf("detail %q does not contain %q", d.Detail, tt.detail)
				}
				if strings.Contains(d.Detail, tt.token) || strings.Contains(d.Detail, parts[2]) {
					t.Fatalf("detail %q has the token", d.Detail)
				}
				if len(d.Detail) > maxDetail+len("…") {
					t.Fatalf("detail of %d bytes, over %d", len(d.Detail), maxDetail)
				}
			}
		})
	}
	// The valid one works, and none of the above fetched the keys again
	// (the clock stood still: one fetch at most per 10 s).
	allowWrite(t, g, valid, "")
	if n := is.Fetches.Load(); n != 1 {
		t.Fatalf("%d fetches", n)
	}
}

func TestOIDCKeyRotation(t *testing.T) {
	clock := newFakeClock(testStart)
	is := standin.StartIdP(t, rsaKey1())
	g := oidcGuard(t, is, clock, nil)
	allowWrite(t, g, rsaKey1().Sign(t, claims(is, clock, "team-a")), "")
	// The provider publishes a new key and signs with it, a minute later.
	is.Publish(rsaKey1(), rsaKey2())
	clock.Add(time.Minute)
	allowWrite(t, g, rsaKey2().Sign(t, claims(is, clock, "team-a")), "new key")
	allowWrite(t, g, rsaKey1().Sign(t, claims(is, clock, "team-a")), "old key")
	if n := is.Fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
	// The old key is withdrawn; an hour on, the set is fetched again with
	// the next JWT and the old key stops working.
	is.Publish(rsaKey2())
	c := claims(is, clock, "team-a") // issued before the set is fetched again
	c["exp"] = clock.Now().Add(3 * time.Hour).Unix()
	old := rsaKey1().Sign(t, c)
	clock.Add(keyMaxAge)
	if d := g.Decide(bearerReq(old), ScopeMetricsWrite); d.Status != 401 {
		t.Fatalf("withdrawn key: %+v", d)
	}
	if n := is.Fetches.Load(); n != 3 {
		t.Fatalf("%d fetches, want 3", n)
	}
	allowWrite(t, g, rsaKey2().Sign(t, claims(is, clock, "team-a")), "")
}

// TestOIDCKeysSurviveAReload: the Guard of a reloaded configuration starts
// with the keys its predecessor fetched: with the provider down meanwhile,
// JWTs signed with them still verify, without a fetch.
func TestOIDCKeysSurviveAReload(t *testing.T) {
	clock := newFakeClock(testStart)
	is := standin.StartIdP(t, rsaKey1())
	old := oidcGuard(t, is, clock, nil)
	tok := rsaKey1().Sign(t, claims(is, clock, "team-a"))
	allowWrite(t, old, tok, "")
	_ = old.Close()
	is.Down.Store(true)
	fetches := is.Fetches.Load() + is.Discovers.Load()
	reloaded := oidcGuard(t, is, clock, nil)
	allowWrite(t, reloaded, tok, "after a reload with the provider down")
	if n := is.Fetches.Load() + is.Discovers.Load() - fetches; n != 0 {
		t.Errorf("%d requests to the provider after the reload, want 0", n)
	}
}

func TestOIDCRefetchRateLimit(t *testing.T) {
	clock := newFakeClock(testStart)
	is := standin.StartIdP(t, rsaKey1())
	g := oidcGuard(t, is, clock, nil)
	good := rsaKey1().Sign(t, claims(is, clock, "team-a"))
	allowWrite(t, g, good, "")
	// Tokens with made-up key IDs, many at once: one fetch for all of them
	// after the interval, none before. Within it, a token issued since the
	// last fetch may be signed with a key published since: 503 (retried)
	// until a fetch can tell.
	forged := func(kid string) string { return strayKey().SignAs(t, kid, claims(is, clock, "team-a")) }
	for i := range 5 {
		if d := g.Decide(bearerReq(forged("kid-a"+string(rune('0'+i)))), ScopeMetricsWrite); d.Status != 503 {
			t.Fatalf("%+v", d)
		}
	}
	if n := is.Fetches.Load(); n != 1 {
		t.Fatalf("%d fetches within the interval, want 1", n)
	}
	// Issued before the fetch they cause: invalid (401) once it is done.
	var toks []string
	for i := range 20 {
		toks = append(toks, forged("kid-b"+string(rune('a'+i))))
	}
	clock.Add(minRefetchInterval)
	var wg sync.WaitGroup
	for _, tok := range toks {
		wg.Go(func() {
			d := g.Decide(bearerReq(tok), ScopeMetricsWrite)
			if d.Status != 401 {
				t.Errorf("%+v", d)
			}
		})
	}
	wg.Wait()
	if n := is.Fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
	clock.Add(minRefetchInterval - time.Millisecond)
	g.Decide(bearerReq(forged("kid-c")), ScopeMetricsWrite)
	if n := is.Fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want still 2", n)
	}
	clock.Add(time.Millisecond)
	g.Decide(bearerReq(forged("kid-d")), ScopeMetricsWrite)
	if n := is.Fetches.Load(); n != 3 {
		t.Fatalf("%d fetches, want 3", n)
	}
	// Known tokens never wait for or cause a fetch.
	if d := g.Decide(bearerReq(good), ScopeMetricsWrite); !d.Allowed() || is.Fetches.Load() != 3 {
		t.Fatalf("%+v", d)
	}
}

func TestOIDCProviderDown(t *testing.T) {
	clock := newFakeClock(testStart)
	is := standin.StartIdP(t, rsaKey1())
	is.Down.Store(true)
	vec := NewRequestsCounter()
	cfg := decisionConfig()
	cfg.OIDC = &OIDCConfig{Issuer: is.URL(), Audience: "metrics-gateway"}
	// The guard starts although the provider is down: nothing is fetched yet.
	g := newTestGuard(t, cfg, Options{Now: clock.Now, HTTPClient: is.Srv.Client(), Metrics: vec})
	if n := is.Discovers.Load(); n != 0 {
		t.Fatalf("%d discoveries at start", n)
	}
	tok := rsaKey1().Sign(t, claims(is, clock, "team-a"))
	for range 3 {
		d := g.Decide(bearerReq(tok), ScopeMetricsWrite)
		if d.Status != 503 || d.WWWAuthenticate != "" || !strings.Contains(d.Detail, "500") && !strings.Contains(d.Detail, "unavailable") {
			t.Fatalf("%+v", d)
		}
	}
	if n := is.Discovers.Load(); n != 1 {
		t.Fatalf("%d discoveries, want 1 (rate-limited)", n)
	}
	if got := testutil.ToFloat64(vec.WithLabelValues("", "unavailable")); got != 3 {
		t.Fatalf("unavailable counted %v", got)
	}
	if st := g.Status().OIDC; !strings.Contains(st.LastError, "500") || st.Keys != 0 {
		t.Fatalf("%+v", st)
	}
	// Static tokens are not affected.
	if d := g.Decide(basicReq("team-a", "token-a"), ScopeMetricsWrite); !d.Allowed() {
		t.Fatalf("%+v", d)
	}
	// Back up: the next attempt, 10 s later, succeeds.
	is.Down.Store(false)
	clock.Add(minRefetchInterval)
	allowWrite(t, g, tok, "")
	if st := g.Status().OIDC; st.LastError != "" || st.Keys != 1 {
		t.Fatalf("%+v", st)
	}

	// Down again while keys are cached: known keys still work; an unknown
	// key ID cannot be checked (503).
	is.Down.Store(true)
	clock.Add(minRefetchInterval)
	allowWrite(t, g, tok, "")
	if d := g.Decide(bearerReq(rsaKey2().Sign(t, claims(is, clock, "team-a"))), ScopeMetricsWrite); d.Status != 503 {
		t.Fatalf("%+v", d)
	}
}

func TestOIDCDiscoveryIssuerMismatch(t *testing.T) {
	clock := newFakeClock(testStart)
	is := standin.StartIdP(t, rsaKey1())
	is.DocIssuer.Store("https://other.example.com")
	g := oidcGuard(t, is, clock, nil)
	d := g.Decide(bearerReq(rsaKey1().Sign(t, claims(is, clock, "team-a"))), ScopeMetricsWrite)
	if d.Status != 503 || !strings.Contains(d.Detail, "not the configured") {
		t.Fatalf("%+v", d)
	}
	if is.Fetches.Load() != 0 {
		t.Fatal("keys fetched from a mismatched provider")
	}
}

// A request that ends while a fetch is under way stops waiting.
func TestOIDCWaitEndsWithRequest(t *testing.T) {
	clock := newFakeClock(testStart)
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		http.Error(w, "slow", http.StatusServiceUnavailable)
	}))
	defer slow.Close()
	defer close(release)
	cfg := decisionConfig()
	cfg.OIDC = &OIDCConfig{Issuer: slow.URL}
	g := newTestGuard(t, cfg, Options{Now: clock.Now, HTTPClient: slow.Client()})
	is := &standin.IdP{Srv: slow}
	tok := rsaKey1().Sign(t, claims(is, clock, "team-a"))

	first := make(chan Decision)
	go func() { first <- g.Decide(bearerReq(tok), ScopeMetricsWrite) }()
	<-entered // the first request is fetching
	r := bearerReq(tok)
	ctx, cancel := context.WithCancel(r.Context())
	cancel()
	if d := g.Decide(r.WithContext(ctx), ScopeMetricsWrite); d.Status != 503 {
		t.Fatalf("%+v", d)
	}
	release <- struct{}{}
	if d := <-first; d.Status != 503 {
		t.Fatalf("%+v", d)
	}
}

// TestOIDCFetchWaitsOnlyAsLongAsTheRequest: with the provider hanging, a
// token that needs a fetch (unknown key ID) gets 503 when its request's
// context ends, and one that finds the keys stale is checked with the old
// keys then; neither waits for the fetch's own timeout.
func TestOIDCFetchWaitsOnlyAsLongAsTheRequest(t *testing.T) {
	const patience = 200 * time.Millisecond
	clock := newFakeClock(testStart)
	is := standin.StartIdP(t, rsaKey1())
	g := oidcGuard(t, is, clock, nil)
	allowWrite(t, g, rsaKey1().Sign(t, claims(is, clock, "team-a")), "")
	decide := func(tok string) (Decision, time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		start := time.Now()
		d := g.Decide(bearerReq(tok).WithContext(ctx), ScopeMetricsWrite)
		return d, time.Since(start)
	}
	fetched := func() int { return g.Status().OIDC.Fetches }

	release := is.Stall()
	t.Cleanup(release)
	clock.Add(minRefetchInterval)
	d, took := decide(rsaKey2().Sign(t, claims(is, clock, "team-a")))
	if d.Status != http.StatusServiceUnavailable || took > fetchTimeout/3 {
		t.Errorf("unknown key ID, provider hanging: %d after %v, want 503 when the request's %v are up", d.Status, took, patience)
	}
	release()
	standin.WaitFor(t, 10*time.Second, "the hung fetch to end", func() bool { return fetched() == 2 })

	release = is.Stall()
	t.Cleanup(release)
	clock.Add(keyMaxAge)
	d, took = decide(rsaKey1().Sign(t, claims(is, clock, "team-a")))
	if !d.Allowed() || took > fetchTimeout/3 {
		t.Errorf("stale keys, provider hanging: %+v after %v, want allowed with the old keys when the request's %v are up", d, took, patience)
	}
	release()
	standin.WaitFor(t, 10*time.Second, "the hung fetch to end", func() bool { return fetched() == 3 })
}

// allowWrite fails the test unless g lets the bearer token write.
func allowWrite(t *testing.T, g *Guard, token, when string) {
	t.Helper()
	if d := g.Decide(bearerReq(token), ScopeMetricsWrite); !d.Allowed() {
		t.Fatalf("%s: not allowed: %+v", cmp.Or(when, "token"), d)
	}
}

// TestOIDCNewKeyRightAfterAFetch: the provider publishes a key moments
// after a fetch (here one forced by a forged key ID), too soon to fetch
// again: a valid token of the new key gets 503, which a client retries,
// not 401, which drops its data; after the interval it is allowed. A
// token of an unknown key issued before the last fetch is invalid.
func TestOIDCNewKeyRightAfterAFetch(t *testing.T) {
	clock, is, g, _ := verifiedGuard(t)
	before := claims(is, clock, "team-a")
	before["iat"] = clock.Now().Add(-time.Minute).Unix() // before the fetch
	oldForged := strayKey().SignAs(t, "old", before)
	clock.Add(minRefetchInterval)
	if d := g.Decide(bearerReq(strayKey().SignAs(t, "junk", claims(is, clock, "team-a"))), ScopeMetricsWrite); d.Status != 401 {
		t.Fatalf("a forged key ID, the keys fetched after it was issued: %+v", d)
	}
	if d := g.Decide(bearerReq(oldForged), ScopeMetricsWrite); d.Status != 401 {
		t.Fatalf("an unknown key ID issued before the last fetch: %+v", d)
	}
	is.Publish(rsaKey1(), rsaKey2())
	clock.Add(time.Second)
	tok := rsaKey2().Sign(t, claims(is, clock, "team-a"))
	if d := g.Decide(bearerReq(tok), ScopeMetricsWrite); d.Status != http.StatusServiceUnavailable {
		t.Fatalf("a valid token of a key published after the last fetch: %d %s (%s), want 503", d.Status, d.Message, d.Detail)
	}
	clock.Add(minRefetchInterval)
	allowWrite(t, g, tok, "")
}

// TestOIDCNewKeyWhileProviderDown: with keys in hand and the provider down,
// a token signed by a key the provider published since gets 503 (retried)
// every time until a fetch can tell, never 401 (a remote-write client
// drops the batch), also within the refetch interval after the failed
// fetch.
func TestOIDCNewKeyWhileProviderDown(t *testing.T) {
	clock, is, g, _ := verifiedGuard(t)
	is.Down.Store(true)
	clock.Add(minRefetchInterval)
	tok := rsaKey2().Sign(t, claims(is, clock, "team-a"))
	for i := range 3 {
		if d := g.Decide(bearerReq(tok), ScopeMetricsWrite); d.Status != http.StatusServiceUnavailable {
			t.Fatalf("try %d with the provider down: %d %s, want 503", i, d.Status, d.Message)
		}
		clock.Add(time.Second)
	}
}

// TestOIDCStaleKeysWaitLittle: a token whose keys are in hand, found stale
// (an hour old) while the provider hangs and the request has no deadline
// (a push has none), waits at most staleFetchWait for the fetch, then is
// checked with the keys in hand.
func TestOIDCStaleKeysWaitLittle(t *testing.T) {
	clock, is, g, tok := verifiedGuard(t)
	release := is.Stall()
	t.Cleanup(release)
	clock.Add(keyMaxAge)
	start := time.Now()
	d := g.Decide(bearerReq(tok), ScopeMetricsWrite) // context.Background: no deadline
	if took := time.Since(start); !d.Allowed() || took >= fetchTimeout {
		t.Errorf("stale keys, provider hanging, no deadline: %+v after %v, want allowed without waiting for the fetch's timeout", d, took)
	}
	release()
	standin.WaitFor(t, 20*time.Second, "the hung fetch to end", func() bool { return g.Status().OIDC.Fetches == 2 })
}

// verifiedGuard is an OIDC Guard on a fake clock whose provider signs with
// rsaKey1, with a token of team-a verified (so the keys are fetched).
func verifiedGuard(t *testing.T) (*fakeClock, *standin.IdP, *Guard, string) {
	t.Helper()
	clock := newFakeClock(testStart)
	is := standin.StartIdP(t, rsaKey1())
	g := oidcGuard(t, is, clock, nil)
	tok := rsaKey1().Sign(t, claims(is, clock, "team-a"))
	allowWrite(t, g, tok, "")
	return clock, is, g, tok
}
