package access

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeClock is a clock the tests move.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Add(d time.Duration) { c.ns.Add(int64(d)) }
func (c *fakeClock) Set(t time.Time)     { c.ns.Store(t.UnixNano()) }

var testStart = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

func decisionConfig() Config {
	return Config{
		Realm: "test realm",
		Policies: []Policy{
			{Name: "team-a", Tenants: []string{"team-a"}, Scopes: []string{"metrics:write", "metrics:read"},
				Tokens: []Token{{Hash: HashToken("token-a")}}},
			{Name: "multi", Tenants: []string{"team-b", "team-c"}, Scopes: []string{"metrics:read", "rules:read", "metrics:write"},
				Tokens: []Token{{Hash: HashToken("token-b")}}},
			{Name: "ops", Tenants: []string{"*"}, Scopes: []string{"admin", "metrics:read"},
				Tokens: []Token{{Hash: HashToken("token-c")}}},
			{Name: "expiring", Tenants: []string{"team-a"}, Scopes: []string{"metrics:read"},
				Tokens: []Token{
					{Hash: HashToken("token-old"), Expires: "2026-01-01T00:00:00Z"},
					{Hash: HashToken("token-soon"), Expires: "2026-06-01T01:00:00Z"},
				}},
		},
	}
}

func newTestGuard(t testing.TB, cfg Config, opts Options) *Guard {
	t.Helper()
	g, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func basicReq(user, pass string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "http://gw/api/v1/push", nil)
	r.SetBasicAuth(user, pass)
	return r
}

// authReq is a request with this Authorization header.
func authReq(authorization string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://gw/", nil)
	r.Header.Set("Authorization", authorization)
	return r
}

func bearerReq(token string, orgIDs ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://gw/prometheus/api/v1/query", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	for _, o := range orgIDs {
		r.Header.Add("X-Scope-OrgID", o)
	}
	return r
}

func TestDecide(t *testing.T) {
	clock := newFakeClock(testStart)
	g := newTestGuard(t, decisionConfig(), Options{Now: clock.Now})

	tests := []struct {
		name       string
		req        *http.Request
		scope      Scope
		status     int
		tenant     string // when allowed
		policy     string
		msg        string // substring of Message
		challenged bool   // WWW-Authenticate set
	}{
		// Basic.
		{"basic allowed", basicReq("team-a", "token-a"), ScopeMetricsWrite, 0, "team-a", "team-a", "", false},
		{"basic wrong tenant", basicReq("team-b", "token-a"), ScopeMetricsWrite, 403, "", "team-a", `tenant "team-b" is not granted`, false},
		{"basic missing scope", basicReq("team-a", "token-a"), ScopeMetricsDelete, 403, "", "team-a", "scope metrics:delete is not granted", false},
		{"basic unknown token", basicReq("team-a", "nope"), ScopeMetricsWrite, 401, "", "", "invalid or unknown token", true},
		{"basic empty password", basicReq("team-a", ""), ScopeMetricsWrite, 401, "", "", "empty token", true},
		{"basic invalid tenant", basicReq("team a", "token-a"), ScopeMetricsWrite, 400, "", "team-a", `invalid tenant in "team a": tenant ID 'team a' contains unsupported character ' '`, false},
		{"basic tenant dotdot", basicReq("..", "token-a"), ScopeMetricsWrite, 400, "", "team-a", "'.' or '..'", false},
		{"basic empty user, one tenant", basicReq("", "token-a"), ScopeMetricsWrite, 0, "team-a", "team-a", "", false},
		{"basic multi tenant read", basicReq("team-b|team-c", "token-b"), ScopeMetricsRead, 0, "team-b|team-c", "multi", "", false},
		{"basic multi tenant rules read", basicReq("team-c|team-b", "token-b"), ScopeRulesRead, 0, "team-c|team-b", "multi", "", false},
		{"basic multi tenant write", basicReq("team-b|team-c", "token-b"), ScopeMetricsWrite, 400, "", "multi", `several tenants ("team-b|team-c") are allowed for metrics:read and rules:read only, not metrics:write`, false},
		{"basic multi tenant one not granted", basicReq("team-b|team-x", "token-b"), ScopeMetricsRead, 403, "", "multi", `tenant "team-x" is not granted`, false},
		{"tenant with dskit metadata", bearerReq("token-a", "team-a:product=k6"), ScopeMetricsWrite, 0, "team-a:product=k6", "team-a", "", false},
		{"metadata does not grant another tenant", bearerReq("token-a", "team-b:x=team-a"), ScopeMetricsWrite, 403, "", "team-a", `tenant "team-b" is not granted`, false},
		{"multi tenant with metadata", bearerReq("token-b", "team-b:a=b|team-c"), ScopeMetricsRead, 0, "team-b:a=b|team-c", "multi", "", false},
		{"basic tenant not printable", basicReq("team-a\x7f", "token-a"), ScopeMetricsWrite, 400, "", "team-a", "not printable ASCII", false},
		{"basic multi tenant empty part", basicReq("team-b|", "token-b"), ScopeMetricsRead, 400, "", "multi", "tenant ID is empty", false},
		{"basic star", basicReq("anyone|else", "token-c"), ScopeMetricsRead, 0, "anyone|else", "ops", "", false},
		{"basic star admin", basicReq("anyone", "token-c"), ScopeAdmin, 0, "anyone", "ops", "", false},
		{"admin implies nothing", basicReq("anyone", "token-c"), ScopeMetricsWrite, 403, "", "ops", "scope metrics:write is not granted", false},
		{"basic username wins over header", func() *http.Request {
			r := basicReq("team-a", "token-a")
			r.Header.Set("X-Scope-OrgID", "team-b")
			return r
		}(), ScopeMetricsWrite, 0, "team-a", "team-a", "", false},

		// Bearer.
		{"bearer with header", bearerReq("token-b", "team-c"), ScopeMetricsRead, 0, "team-c", "multi", "", false},
		{"bearer one-tenant default", bearerReq("token-a"), ScopeMetricsRead, 0, "team-a", "team-a", "", false},
		{"bearer empty header, one-tenant default", bearerReq("token-a", ""), ScopeMetricsRead, 0, "team-a", "team-a", "", false},
		{"bearer tenant required", bearerReq("token-b"), ScopeMetricsRead, 400, "", "multi", "a tenant is required", false},
		{"bearer star needs tenant", bearerReq("token-c"), ScopeAdmin, 400, "", "ops", "a tenant is required", false},
		{"bearer two headers", bearerReq("token-b", "team-b", "team-c"), ScopeMetricsRead, 400, "", "multi", "more than one X-Scope-OrgID header", false},
		{"bearer multi tenant header", bearerReq("token-b", "team-b|team-c"), ScopeMetricsRead, 0, "team-b|team-c", "multi", "", false},
		{"bearer multi tenant write", bearerReq("token-b", "team-b|team-c"), ScopeMetricsWrite, 400, "", "multi", "several tenants", false},
		{"bearer wrong tenant", bearerReq("token-a", "team-b"), ScopeMetricsRead, 403, "", "team-a", `tenant "team-b" is not granted`, false},
		{"bearer unknown", bearerReq("what"), ScopeMetricsRead, 401, "", "", "invalid or unknown token", true},
		{"bearer lowercase scheme", authReq("bearer  token-a"), ScopeMetricsRead, 0, "team-a", "team-a", "", false},
		{"bearer empty", authReq("Bearer "), ScopeMetricsRead, 401, "", "", "empty token", true},
		{"jwt-shaped static token without oidc", bearerReq("a.b.c"), ScopeMetricsRead, 401, "", "", "invalid or unknown token", true},

		// Expiry.
		{"expired", basicReq("team-a", "token-old"), ScopeMetricsRead, 401, "", "", "token expired", true},
		{"not yet expired", basicReq("team-a", "token-soon"), ScopeMetricsRead, 0, "team-a", "expiring", "", false},

		// Malformed or missing credentials.
		{"no credentials", httptest.NewRequest(http.MethodGet, "http://gw/", nil), ScopeMetricsRead, 401, "", "", "authentication required", true},
		{"unsupported scheme", authReq("Digest username=x"), ScopeMetricsRead, 401, "", "", "authentication required", true},
		{"basic not base64", authReq("Basic !!!"), ScopeMetricsRead, 401, "", "", "not base64", true},
		{"basic without colon", authReq("Basic " + base64.StdEncoding.EncodeToString([]byte("token-a"))), ScopeMetricsRead, 401, "", "", "no ':'", true},
		{"two authorization headers", func() *http.Request {
			r := bearerReq("token-a")
			r.Header.Add("Authorization", "Bearer token-b")
			return r
		}(), ScopeMetricsRead, 400, "", "", "more than one Authorization header", false},
		{"long basic credential", basicReq(strings.Repeat("t", 150), strings.Repeat("p", 400)), ScopeMetricsRead, 401, "", "", "invalid or unknown token", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.req.Header.Clone()
			d := g.Decide(tt.req, tt.scope)
			if d.Status != tt.status {
				t.Fatalf("status %d (%q), want %d", d.Status, d.Message, tt.status)
			}
			if d.Allowed() != (tt.status == 0) {
				t.Fatal("Allowed disagrees with Status")
			}
			if tt.status == 0 && d.Tenant != tt.tenant {
				t.Fatalf("tenant %q, want %q", d.Tenant, tt.tenant)
			}
			if d.Policy != tt.policy {
				t.Fatalf("policy %q, want %q", d.Policy, tt.policy)
			}
			if !strings.Contains(d.Message, tt.msg) {
				t.Fatalf("message %q does not contain %q", d.Message, tt.msg)
			}
			if strings.Contains(d.Message, "\n") {
				t.Fatalf("message %q has several lines", d.Message)
			}
			wantChallenge := ""
			if tt.challenged {
				wantChallenge = `Basic realm="test realm"`
			}
			if d.WWWAuthenticate != wantChallenge {
				t.Fatalf("WWW-Authenticate %q, want %q", d.WWWAuthenticate, wantChallenge)
			}
			for _, s := range []string{d.Message, d.Detail} {
				for _, secret := range []string{"token-a", "token-b", "token-c", "token-old", HashToken("token-a")[7:20], HashToken("token-old")[7:20]} {
					if strings.Contains(s, secret) {
						t.Fatalf("%q contains a secret", s)
					}
				}
			}
			// Decide does not change the request.
			if len(before) != len(tt.req.Header) {
				t.Fatalf("headers changed: %v -> %v", before, tt.req.Header)
			}
			for k, v := range before {
				if strings.Join(v, "\x00") != strings.Join(tt.req.Header[k], "\x00") {
					t.Fatalf("header %s changed: %v -> %v", k, v, tt.req.Header[k])
				}
			}
		})
	}

	// The clock passes the expiry of token-soon.
	clock.Add(time.Hour)
	if d := g.Decide(basicReq("team-a", "token-soon"), ScopeMetricsRead); d.Status != 401 || d.Message != "token expired" {
		t.Fatalf("at expiry: %d %q", d.Status, d.Message)
	}
	clock.Add(-time.Nanosecond)
	if d := g.Decide(basicReq("team-a", "token-soon"), ScopeMetricsRead); d.Status != 0 {
		t.Fatalf("just before expiry: %d %q", d.Status, d.Message)
	}
}

func TestDefaultRealm(t *testing.T) {
	g := newTestGuard(t, Config{}, Options{})
	d := g.Decide(bearerReq("x"), ScopeMetricsRead)
	if d.WWWAuthenticate != `Basic realm="metrics_gateway"` {
		t.Fatalf("got %q", d.WWWAuthenticate)
	}
}

func TestApply(t *testing.T) {
	g := newTestGuard(t, decisionConfig(), Options{Now: newFakeClock(testStart).Now})

	r := basicReq("team-b|team-c", "token-b")
	r.Header.Add("X-Scope-OrgID", "team-x")
	r.Header.Add("X-Scope-OrgID", "team-y")
	d := g.Decide(r, ScopeMetricsRead)
	if !d.Allowed() {
		t.Fatal(d.Message)
	}
	d.Apply(r)
	if _, ok := r.Header["Authorization"]; ok {
		t.Fatal("Authorization still there")
	}
	if v := r.Header.Values("X-Scope-OrgID"); len(v) != 1 || v[0] != "team-b|team-c" {
		t.Fatalf("X-Scope-OrgID %q", v)
	}
	if _, _, ok := r.BasicAuth(); ok {
		t.Fatal("basic auth still there")
	}

	// A denied request is left alone.
	r = basicReq("team-a", "nope")
	d = g.Decide(r, ScopeMetricsRead)
	d.Apply(r)
	if r.Header.Get("Authorization") == "" || r.Header.Get("X-Scope-OrgID") != "" {
		t.Fatalf("denied request changed: %v", r.Header)
	}
}

func TestMetrics(t *testing.T) {
	vec := NewRequestsCounter()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(vec)
	g := newTestGuard(t, decisionConfig(), Options{Now: newFakeClock(testStart).Now, Metrics: vec})

	g.Decide(basicReq("team-a", "token-a"), ScopeMetricsWrite)
	g.Decide(basicReq("team-a", "token-a"), ScopeMetricsWrite)
	g.Decide(basicReq("team-b", "token-a"), ScopeMetricsWrite)
	g.Decide(bearerReq("token-b"), ScopeMetricsWrite)
	g.Decide(bearerReq("nope"), ScopeMetricsWrite)

	for _, c := range []struct {
		policy, result string
		want           float64
	}{
		{"team-a", "allowed", 2},
		{"team-a", "forbidden", 1},
		{"multi", "bad_request", 1},
		{"", "unauthenticated", 1},
	} {
		if got := testutil.ToFloat64(vec.WithLabelValues(c.policy, c.result)); got != c.want {
			t.Errorf("%s/%s = %v, want %v", c.policy, c.result, got, c.want)
		}
	}
	// A policy has its series once it decided a request: the three used
	// here, and none for the unused ones (a configuration of thousands of
	// policies keeps no series for them).
	if n := testutil.CollectAndCount(vec); n != 3*int(numResults) {
		t.Fatalf("%d series, want %d", n, 3*int(numResults))
	}
	if d := g.Decide(bearerReq("token-a"), ScopeMetricsRead); d.Result() != "allowed" {
		t.Fatal(d.Result())
	}
}

func TestStatus(t *testing.T) {
	clock := newFakeClock(testStart)
	g := newTestGuard(t, decisionConfig(), Options{Now: clock.Now})
	st := g.Status()
	if len(st.Policies) != 4 || st.LastLoad != testStart || st.LastError != "" || st.File != "" || st.OIDC != nil {
		t.Fatalf("%+v", st)
	}
	exp := st.Policies[3]
	if exp.Name != "expiring" || exp.Source != SourceInline || len(exp.Tokens) != 2 ||
		!exp.Tokens[0].Expired || exp.Tokens[1].Expired || exp.Tokens[1].Expires == nil ||
		!exp.Tokens[1].Expires.Equal(testStart.Add(time.Hour)) {
		t.Fatalf("%+v", exp)
	}
	if st.Policies[0].Tokens[0].Expires != nil || st.Policies[0].Tokens[0].Expired {
		t.Fatalf("%+v", st.Policies[0])
	}
}

// TestUnion: the grant of several policies named by a token lists them
// once each in the configuration's order, grants a scope on a tenant only
// where one policy grants both, and has a default tenant only when every
// policy grants just that one.
func TestUnion(t *testing.T) {
	s := compile([]Policy{
		{Name: "a", Tenants: []string{"t1"}, Scopes: []string{"metrics:read"}},
		{Name: "b", Tenants: []string{"t2"}, Scopes: []string{"metrics:write"}},
		{Name: "c", Tenants: []string{"t1"}, Scopes: []string{"rules:read"}},
		{Name: "d", Tenants: []string{"*"}, Scopes: []string{"alerts:read"}},
	}, nil, nil)
	if s.union([]string{"x", "y"}) != nil {
		t.Error("a union of no configured policy")
	}
	if g := s.union([]string{"b", "x", "b"}); g != &s.byName["b"].grant {
		t.Errorf("one configured policy named twice: %+v", g)
	}
	g := s.union([]string{"c", "b", "a", "c", "unknown"})
	if g.name != "a+b+c" || len(g.parts) != 3 || g.only != "" {
		t.Errorf("union %q, %d parts, only %q", g.name, len(g.parts), g.only)
	}
	read, write := ScopeMetricsRead.bit(), ScopeMetricsWrite.bit()
	if !g.hasTenant("t1", read) || g.hasTenant("t2", read) || !g.hasTenant("t2", write) || g.hasTenant("t1", write) {
		t.Error("a scope of one policy extended to another's tenant")
	}
	if g := s.union([]string{"c", "a"}); g.name != "a+c" || g.only != "t1" {
		t.Errorf("two policies of tenant t1: %q, only %q", g.name, g.only)
	}
	if g := s.union([]string{"a", "d"}); g.only != "" || !g.hasTenant("t9", ScopeAlertsRead.bit()) {
		t.Errorf("with a policy of every tenant: only %q", g.only)
	}
}
