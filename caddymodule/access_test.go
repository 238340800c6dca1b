package caddymodule_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/metrics-gateway/metrics_gateway/access"
	"github.com/metrics-gateway/metrics_gateway/caddymodule"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// Static tokens of the access tests, as `caddy metrics-gateway token` makes
// them (43 base64url characters), and the policies that hold their hashes.
const (
	tokWriter  = "wRiTeR-team-a-0123456789abcdefghijklmnopqrs" // team-a-writer: team-a, metrics:write
	tokReader  = "rEaDeR-grafana-0123456789abcdefghijklmnopqr" // grafana: team-a team-b, metrics:read rules:read alerts:read
	tokEditor  = "eDiToR-team-a-0123456789abcdefghijklmnopqrs" // team-a-editor: team-a, rules:write alerts:write
	tokOps     = "oPs-everyone-0123456789abcdefghijklmnopqrst" // ops: *, admin
	tokExpired = "eXpIrEd-team-a-0123456789abcdefghijklmnopqr" // retired: team-a, metrics:write, expired
)

var allTokens = []string{tokWriter, tokReader, tokEditor, tokOps, tokExpired}

// accessPolicies is the access_policies block of the tests' Caddyfile.
func accessPolicies() string {
	return fmt.Sprintf(`access_policies {
			policy team-a-writer {
				tenants team-a
				scopes metrics:write
				token %s
			}
			policy grafana {
				tenants team-a team-b
				scopes metrics:read rules:read alerts:read
				token %s
			}
			policy team-a-editor {
				tenants team-a
				scopes rules:write alerts:write
				token %s
			}
			policy ops {
				tenants *
				scopes admin
				token %s
			}
			policy retired {
				tenants team-a
				scopes metrics:write
				token %s expires 2020-01-01T00:00:00Z
			}
			realm mimir
		}`, access.HashToken(tokWriter), access.HashToken(tokReader), access.HashToken(tokEditor),
		access.HashToken(tokOps), access.HashToken(tokExpired))
}

// accessCluster is a distributor stand-in (dskit's httpgrpc server) that
// records the tenant metadata of every call.
type accessCluster struct {
	*standin.Cluster
	mu       sync.Mutex
	tenantMD [][]string // x-scope-orgid values of each call
	authMD   int        // calls with authorization metadata
}

func startAccessCluster(t testing.TB) *accessCluster {
	t.Helper()
	ac := &accessCluster{}
	var err error
	ac.Cluster, err = standin.StartCluster(distributorName, 1, standin.WithUnaryInterceptors(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			ac.mu.Lock()
			ac.tenantMD = append(ac.tenantMD, md.Get("x-scope-orgid"))
			if len(md.Get("authorization")) > 0 {
				ac.authMD++
			}
			ac.mu.Unlock()
			return next(ctx, req)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ac.Stop)
	ac.Distributors[0].KeepRecords(100)
	return ac
}

// lastCall returns the tenant metadata and the HTTP request of the last
// call the distributor got.
func (ac *accessCluster) lastCall(t *testing.T) ([]string, standin.Record) {
	t.Helper()
	recs := ac.Distributors[0].Records()
	ac.mu.Lock()
	defer ac.mu.Unlock()
	if len(recs) == 0 || len(ac.tenantMD) == 0 {
		t.Fatal("the distributor got no call")
	}
	if ac.authMD != 0 {
		t.Errorf("%d calls carried authorization metadata", ac.authMD)
	}
	return ac.tenantMD[len(ac.tenantMD)-1], recs[len(recs)-1]
}

// accessSetup is a gateway with access_policies in front of echo backends
// for every component but the distributor, a gRPC stand-in.
type accessSetup struct {
	c        *testcaddy.Caddy
	cl       *accessCluster
	backends map[caddymodule.Component]*echoBackend
}

const accessCaddyfile = `:8000 {
	header >X-MG-Policy {http.metrics_gateway.policy}
	metrics_gateway {
		proxy {
			default %s
			distributor %s
			query_frontend %s
			ruler %s
			alertmanager %s
		}
		%s
	}%s
}
`

func startAccess(t *testing.T, policies, extra string) *accessSetup {
	t.Helper()
	return startAccessWith(t, testcaddy.StartCaddyfile, policies, extra)
}

// startAccessProcess is startAccess with Caddy in a process of its own.
func startAccessProcess(t *testing.T, policies, extra string) *accessSetup {
	t.Helper()
	return startAccessWith(t, testcaddy.StartCaddyfileProcess, policies, extra)
}

func startAccessWith(t *testing.T, start func(testing.TB, string) *testcaddy.Caddy, policies, extra string) *accessSetup {
	t.Helper()
	s := &accessSetup{cl: startAccessCluster(t), backends: map[caddymodule.Component]*echoBackend{}}
	for _, c := range []caddymodule.Component{caddymodule.ComponentDefault, caddymodule.ComponentQueryFrontend, caddymodule.ComponentRuler, caddymodule.ComponentAlertmanager} {
		s.backends[c] = startEchoBackend(t, string(c))
	}
	s.c = start(t, s.caddyfile(policies, extra))
	return s
}

func (s *accessSetup) caddyfile(policies, extra string) string {
	return fmt.Sprintf(accessCaddyfile, s.backends[caddymodule.ComponentDefault].URL(), s.cl.Target(),
		s.backends[caddymodule.ComponentQueryFrontend].URL(), s.backends[caddymodule.ComponentRuler].URL(),
		s.backends[caddymodule.ComponentAlertmanager].URL(), policies, extra)
}

// served counts the requests every backend got.
func (s *accessSetup) served() int64 {
	n := s.cl.Distributors[0].Requests()
	for _, b := range s.backends {
		n += b.served.Load()
	}
	return n
}

// cred is how a request authenticates or names its tenant.
type cred func(h http.Header)

func basic(tenant, token string) cred {
	return func(h http.Header) {
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(tenant+":"+token)))
	}
}

func bearer(token string, tenants ...string) cred {
	return func(h http.Header) {
		h.Set("Authorization", "Bearer "+token)
		for _, t := range tenants {
			h.Add("X-Scope-OrgID", t)
		}
	}
}

func noCred(http.Header) {}

// answer is a response of the gateway.
type answer struct {
	status int
	header http.Header
	body   string
	echo   echo // when an echo backend answered
}

// send sends a request through the gateway; a push carries a Remote-Write
// body.
func send(t *testing.T, client *http.Client, method, path string, cr cred) answer {
	t.Helper()
	var body io.Reader
	if strings.HasPrefix(path, "/api/v1/push") {
		body = bytes.NewReader(standin.RemoteWriteBody(10, 1))
	}
	req, err := http.NewRequest(method, "http://gateway"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", standin.ContentTypeRW1)
		req.Header.Set("Content-Encoding", "snappy")
	}
	cr(req.Header)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
	if resp.Header.Get("X-Backend") != "" {
		if err := json.Unmarshal(b, &a.echo); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	return a
}

// noSecrets fails when s holds a token or a token hash (its hex part or
// its first 12 hex digits), or a Basic credential.
func noSecrets(t *testing.T, what, s string) {
	t.Helper()
	for _, tok := range allTokens {
		hash := access.HashToken(tok)
		for _, secret := range []string{tok, hash[7:], hash[7:19], base64.StdEncoding.EncodeToString([]byte("team-a:" + tok))} {
			if strings.Contains(s, secret) {
				t.Errorf("%s contains a secret (%.12s...)", what, secret)
			}
		}
	}
}

// TestAccessWriterToken: a writer token pushes to its tenant and nothing
// else; the distributor sees exactly one tenant and no credential.
func TestAccessWriterToken(t *testing.T) {
	t.Parallel()
	s := startAccess(t, accessPolicies(), "")
	c := s.c

	for _, cr := range []cred{basic("team-a", tokWriter), bearer(tokWriter), bearer(tokWriter, "team-a")} {
		a := send(t, c.Client, "POST", "/api/v1/push", cr)
		if a.status != http.StatusOK || a.header.Get("X-MG-Policy") != "team-a-writer" {
			t.Fatalf("push: %d %q policy %q", a.status, a.body, a.header.Get("X-MG-Policy"))
		}
		md, rec := s.cl.lastCall(t)
		if len(md) != 1 || md[0] != "team-a" {
			t.Errorf("gRPC metadata x-scope-orgid %q, want [team-a]", md)
		}
		if v := rec.Header.Values("X-Scope-OrgID"); len(v) != 1 || v[0] != "team-a" || rec.Tenant != "team-a" {
			t.Errorf("the distributor's X-Scope-OrgID: %q", v)
		}
		if _, ok := rec.Header["Authorization"]; ok {
			t.Errorf("Authorization reached the distributor")
		}
	}

	before := s.served()
	// The same token reading: 403 naming the scope.
	a := send(t, c.Client, "GET", "/prometheus/api/v1/query?query=up", basic("team-a", tokWriter))
	if a.status != http.StatusForbidden || a.body != "scope metrics:read is not granted to this token\n" {
		t.Errorf("read with the writer token: %d %q", a.status, a.body)
	}
	// Pushing as another tenant: 403 naming the tenant.
	for _, cr := range []cred{basic("team-b", tokWriter), bearer(tokWriter, "team-b")} {
		a = send(t, c.Client, "POST", "/api/v1/push", cr)
		if a.status != http.StatusForbidden || a.body != "tenant \"team-b\" is not granted to this token\n" ||
			a.header.Get("WWW-Authenticate") != "" {
			t.Errorf("push as team-b: %d %q %v", a.status, a.body, a.header)
		}
		noSecrets(t, "403 answer", a.body)
	}
	if n := s.served() - before; n != 0 {
		t.Errorf("%d refused requests reached a backend", n)
	}
}

// TestAccessReaderToken: a read token on one or several of its tenants.
func TestAccessReaderToken(t *testing.T) {
	t.Parallel()
	s := startAccess(t, accessPolicies(), "")
	c := s.c
	for _, tc := range []struct {
		cr     cred
		tenant string
	}{
		{basic("team-a", tokReader), "team-a"},
		{basic("team-a|team-b", tokReader), "team-a|team-b"},
		{bearer(tokReader, "team-b"), "team-b"},
		{bearer(tokReader, "team-a|team-b"), "team-a|team-b"},
	} {
		a := send(t, c.Client, "GET", "/prometheus/api/v1/query?query=up", tc.cr)
		if a.status != http.StatusOK || a.echo.Backend != "query_frontend" {
			t.Fatalf("query as %s: %d %q", tc.tenant, a.status, a.body)
		}
		if v := a.echo.Header.Values("X-Scope-OrgID"); len(v) != 1 || v[0] != tc.tenant {
			t.Errorf("query as %s: the backend got X-Scope-OrgID %q", tc.tenant, v)
		}
		if _, ok := a.echo.Header["Authorization"]; ok {
			t.Errorf("query as %s: Authorization reached the backend", tc.tenant)
		}
		if p := a.header.Get("X-MG-Policy"); p != "grafana" {
			t.Errorf("policy placeholder %q", p)
		}
	}

	before := s.served()
	for _, tc := range []struct {
		method, path string
		cr           cred
		status       int
		msg          string
	}{
		{"GET", "/prometheus/api/v1/query?query=up", basic("team-a|team-c", tokReader), 403, "tenant \"team-c\" is not granted to this token\n"},
		{"GET", "/prometheus/api/v1/query?query=up", bearer(tokReader), 400, "a tenant is required: set X-Scope-OrgID (or the Basic username); this token's policy grants more than one tenant\n"},
		{"GET", "/prometheus/api/v1/query?query=up", bearer(tokReader, "team-a", "team-b"), 400, "more than one X-Scope-OrgID header\n"},
		{"POST", "/api/v1/push", basic("team-a|team-b", tokReader), 400, "several tenants (\"team-a|team-b\") are allowed for metrics:read and rules:read only, not metrics:write\n"},
		{"POST", "/api/v1/push", basic("team-a|team-b", tokWriter), 400, "several tenants (\"team-a|team-b\") are allowed for metrics:read and rules:read only, not metrics:write\n"},
		{"GET", "/prometheus/api/v1/query?query=up", basic("team/a", tokReader), 400, "invalid tenant in \"team/a\": tenant ID 'team/a' contains unsupported character '/'\n"},
	} {
		a := send(t, c.Client, tc.method, tc.path, tc.cr)
		if a.status != tc.status || a.body != tc.msg {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.path, a.status, a.body, tc.status, tc.msg)
		}
	}
	if n := s.served() - before; n != 0 {
		t.Errorf("%d refused requests reached a backend", n)
	}
}

// TestAccessUnauthenticated: no, wrong or expired credentials get 401 with
// the challenge, from the gateway's own error writer (handle_errors
// included); / and /ready need none.
func TestAccessUnauthenticated(t *testing.T) {
	t.Parallel()
	for _, withHandler := range []bool{false, true} {
		t.Run(fmt.Sprintf("handle_errors=%t", withHandler), func(t *testing.T) {
			extra := ""
			if withHandler {
				extra = `
	handle_errors {
		respond "handled {err.status_code}: {err.message}"
	}`
			}
			s := startAccess(t, accessPolicies(), extra)
			c := s.c
			before := s.served()
			for name, cr := range map[string]cred{
				"no credentials": noCred,
				"wrong token":    basic("team-a", "not-a-token-of-any-policy"),
				"wrong bearer":   bearer("not-a-token-of-any-policy", "team-a"),
				"expired token":  basic("team-a", tokExpired),
				"empty password": basic("team-a", ""),
				"other scheme":   func(h http.Header) { h.Set("Authorization", "Digest username=team-a") },
			} {
				for _, path := range []string{"/api/v1/push", "/prometheus/api/v1/query", "/config"} {
					a := send(t, c.Client, "POST", path, cr)
					if a.status != http.StatusUnauthorized || a.header.Get("WWW-Authenticate") != `Basic realm="mimir"` {
						t.Errorf("%s on %s: %d %v %q", name, path, a.status, a.header, a.body)
					}
					if withHandler && !strings.HasPrefix(a.body, "handled 401: ") {
						t.Errorf("%s on %s: not through handle_errors: %q", name, path, a.body)
					}
					noSecrets(t, "401 answer", a.body)
				}
			}
			if n := s.served() - before; n != 0 {
				t.Errorf("%d refused requests reached a backend", n)
			}
			for path, want := range map[string]string{"/": "OK", "/ready": "ready"} {
				resp, body, err := c.Get(path)
				if err != nil || resp.StatusCode != 200 || string(body) != want {
					t.Errorf("GET %s without credentials: %v %v %q", path, resp, err, body)
				}
			}
		})
	}
}

// TestAccessScopesPerMethod: the ruler and the Alertmanager need their read
// scope to read and their write scope to change anything; a path the route
// table does not claim needs admin.
func TestAccessScopesPerMethod(t *testing.T) {
	t.Parallel()
	s := startAccess(t, accessPolicies(), "")
	c := s.c
	cases := []struct {
		method, path string
		cr           cred
		status       int
		backend      string // when allowed
	}{
		{"GET", "/prometheus/config/v1/rules/ns", basic("team-a", tokReader), 200, "ruler"},
		{"POST", "/prometheus/config/v1/rules/ns", basic("team-a", tokReader), 403, ""},
		{"POST", "/prometheus/config/v1/rules/ns", basic("team-a", tokEditor), 202, "ruler"},
		{"DELETE", "/prometheus/config/v1/rules/ns/group", basic("team-a", tokEditor), 202, "ruler"},
		{"GET", "/prometheus/config/v1/rules/ns", basic("team-a", tokEditor), 403, ""},
		{"GET", "/prometheus/api/v1/rules", basic("team-a|team-b", tokReader), 200, "ruler"},
		{"GET", "/alertmanager/api/v2/alerts", basic("team-b", tokReader), 200, "alertmanager"},
		{"POST", "/alertmanager/api/v2/silences", basic("team-b", tokReader), 403, ""},
		{"POST", "/alertmanager/api/v2/silences", basic("team-a", tokEditor), 202, "alertmanager"},
		{"GET", "/api/v1/alerts", basic("team-a", tokReader), 200, "alertmanager"},
		{"POST", "/api/v1/alerts", basic("team-a", tokReader), 403, ""},
		{"POST", "/api/v1/alerts", basic("team-a", tokEditor), 202, "alertmanager"},
		{"GET", "/config", basic("team-a", tokReader), 403, ""},
		{"GET", "/config", basic("team-a", tokWriter), 403, ""},
		{"GET", "/config", basic("team-a", tokOps), 200, "default"},
		{"GET", "/config", bearer(tokOps, "any-tenant"), 200, "default"},
		{"GET", "/ingester/ring", basic("team-a", tokReader), 403, ""},
		{"GET", "/ruler/ring", basic("team-a", tokEditor), 403, ""},
		{"GET", "/ruler/ring", basic("team-a", tokOps), 200, "ruler"},
		{"POST", "/compactor/delete_tenant", basic("team-a", tokOps), 403, ""},
		{"GET", "/prometheus/api/v1/query", basic("team-a", tokOps), 403, ""},
	}
	// The echo backends answer 200; the gateway's status for an allowed
	// write is the backend's, so 202 above means "reached it with 200".
	for _, tc := range cases {
		before := s.served()
		a := send(t, c.Client, tc.method, tc.path, tc.cr)
		want := tc.status
		if want == 202 {
			want = 200
		}
		if a.status != want {
			t.Errorf("%s %s: %d %q, want %d", tc.method, tc.path, a.status, a.body, want)
			continue
		}
		if want == 200 && a.echo.Backend != tc.backend {
			t.Errorf("%s %s reached %q, want %s", tc.method, tc.path, a.echo.Backend, tc.backend)
		}
		if want == 403 {
			if !strings.Contains(a.body, "is not granted to this token") {
				t.Errorf("%s %s: 403 %q names nothing", tc.method, tc.path, a.body)
			}
			if n := s.served() - before; n != 0 {
				t.Errorf("%s %s: refused but reached a backend", tc.method, tc.path)
			}
		}
	}
}

// TestAccessVisible: the decision metric, the placeholder and access log
// field, and the admin view; no token or hash in any of them.
func TestAccessVisible(t *testing.T) {
	t.Parallel()
	s := startAccess(t, accessPolicies(), "")
	c := s.c
	before := scrape(t, c)
	send(t, c.Client, "POST", "/api/v1/push", basic("team-a", tokWriter))
	send(t, c.Client, "POST", "/api/v1/push", basic("team-b", tokWriter))
	send(t, c.Client, "GET", "/prometheus/api/v1/query", basic("team-a", "wrong"))
	send(t, c.Client, "GET", "/prometheus/api/v1/query", basic("team-a", tokExpired))
	after := scrape(t, c)
	checkMetrics(t, before, after, map[string]float64{
		`metrics_gateway_auth_requests_total{policy="team-a-writer",result="allowed"}`:   1,
		`metrics_gateway_auth_requests_total{policy="team-a-writer",result="forbidden"}`: 1,
		`metrics_gateway_auth_requests_total{policy="",result="unauthenticated"}`:        2,
	})
	// A policy unused in this configuration counts nothing (its series
	// appear with its first decision).
	if n := metricSum(after, "metrics_gateway_auth_requests_total", `policy="grafana"`) - metricSum(before, "metrics_gateway_auth_requests_total", `policy="grafana"`); n != 0 {
		t.Errorf("policy grafana counted %v decisions, want none", n)
	}
	noSecrets(t, "/metrics", after)

	code, body, err := c.AdminGet("/metrics_gateway/policies")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics_gateway/policies: %d %v %s", code, err, body)
	}
	var view []caddymodule.PoliciesStatus
	if err := json.Unmarshal(body, &view); err != nil {
		t.Fatal(err)
	}
	if len(view) != 1 || view[0].Realm != "mimir" || len(view[0].Policies) != 5 {
		t.Fatalf("policies view: %s", body)
	}
	if p := view[0].Policies[4]; p.Name != "retired" || p.Source != "inline" || p.TokenCount != 1 || !p.Tokens[0].Expired {
		t.Errorf("the retired policy: %+v", p)
	}
	if strings.Contains(string(body), "sha256") {
		t.Errorf("the policies view shows hashes: %s", body)
	}
	noSecrets(t, "the policies view", string(body))

	type entry struct {
		Request struct {
			URI     string              `json:"uri"`
			Headers map[string][]string `json:"headers"`
		} `json:"request"`
		Status int    `json:"status"`
		Policy string `json:"metrics_gateway.policy"`
		Auth   string `json:"metrics_gateway.auth"`
		Detail string `json:"metrics_gateway.auth_detail"`
	}
	var entries []entry
	var raw []byte
	standin.WaitFor(t, 20*time.Second, "4 access log entries", func() bool {
		raw, _ = os.ReadFile(c.AccessLog)
		entries = entries[:0]
		sc := bufio.NewScanner(bytes.NewReader(raw))
		for sc.Scan() {
			var e entry
			if json.Unmarshal(sc.Bytes(), &e) == nil && e.Request.URI != "" {
				entries = append(entries, e)
			}
		}
		return len(entries) >= 4
	})
	want := []entry{{Status: 200, Policy: "team-a-writer", Auth: "allowed"}, {Status: 403, Policy: "team-a-writer", Auth: "forbidden"},
		{Status: 401, Auth: "unauthenticated", Detail: "unknown token"}, {Status: 401, Auth: "unauthenticated", Detail: "token of policy retired expired at 2020-01-01T00:00:00Z"}}
	for i, w := range want {
		g := entries[i]
		if g.Status != w.Status || g.Policy != w.Policy || g.Auth != w.Auth || g.Detail != w.Detail {
			t.Errorf("access log entry %d: %+v, want %+v", i, g, w)
		}
	}
	noSecrets(t, "the access log", string(raw))
}

// TestAccessPolicyFile: the policy file is read again while the gateway
// runs: a new token works within 10 s of the change, a removed one stops,
// and a broken file keeps the policies in force and shows its error.
func TestAccessPolicyFile(t *testing.T) {
	t.Parallel() // Caddy runs in a process of its own
	dir := t.TempDir()
	file := filepath.Join(dir, "policies.yaml")
	writeFile := func(content string) { standin.ReplaceFile(t, file, content) }
	filePolicy := func(name, tenant, token string) string {
		return fmt.Sprintf("  - name: %s\n    tenants: [%s]\n    scopes: [metrics:read]\n    tokens:\n      - hash: %s\n", name, tenant, access.HashToken(token))
	}
	const tokB, tokC = "file-token-b-0123456789abcdefghijklmnopqrstu", "file-token-c-0123456789abcdefghijklmnopqrstu"
	writeFile("policies:\n" + filePolicy("file-b", "team-b", tokB))
	s := startAccessProcess(t, fmt.Sprintf(`access_policies {
			policy grafana {
				tenants team-a
				scopes metrics:read
				token %s
			}
			file %s
		}`, access.HashToken(tokReader), file), "")
	c := s.c
	query := func(tenant, token string) int {
		return send(t, c.Client, "GET", "/prometheus/api/v1/query", basic(tenant, token)).status
	}
	view := func() caddymodule.PoliciesStatus {
		t.Helper()
		code, body, err := c.AdminGet("/metrics_gateway/policies")
		var v []caddymodule.PoliciesStatus
		if err != nil || code != 200 || json.Unmarshal(body, &v) != nil || len(v) != 1 {
			t.Fatalf("GET /metrics_gateway/policies: %d %v %s", code, err, body)
		}
		noSecrets(t, "the policies view", string(body))
		if strings.Contains(string(body), "sha256") {
			t.Errorf("the policies view shows hashes: %s", body)
		}
		return v[0]
	}
	if query("team-a", tokReader) != 200 || query("team-b", tokB) != 200 || query("team-c", tokC) != 401 {
		t.Fatal("the policies at start are not in force")
	}
	if v := view(); v.File != file || len(v.Policies) != 2 || v.Policies[1].Source != "file" || v.LastError != "" {
		t.Fatalf("view: %+v", v)
	}

	// A new token.
	writeFile("policies:\n" + filePolicy("file-b", "team-b", tokB) + filePolicy("file-c", "team-c", tokC))
	changed := time.Now()
	standin.WaitFor(t, 10*time.Second, "the new token to work", func() bool { return query("team-c", tokC) == 200 })
	t.Logf("the new token worked %v after the file changed", time.Since(changed).Round(time.Millisecond))

	// A removed token.
	writeFile("policies:\n" + filePolicy("file-c", "team-c", tokC))
	changed = time.Now()
	standin.WaitFor(t, 10*time.Second, "the removed token to stop working", func() bool { return query("team-b", tokB) == 401 })
	t.Logf("the removed token stopped %v after the file changed", time.Since(changed).Round(time.Millisecond))

	// A broken file: the policies in force stay; the view says why.
	writeFile("policies:\n" + strings.Replace(filePolicy("file-c", "team-c", tokC), "metrics:read", "metrics:reed", 1) + filePolicy("file-b", "team-b", tokB))
	standin.WaitFor(t, 10*time.Second, "the error in the view", func() bool { return view().LastError != "" })
	v := view()
	if !strings.Contains(v.LastError, `unknown scope "metrics:reed"`) || len(v.Policies) != 2 || v.Policies[1].Name != "file-c" {
		t.Errorf("view of a broken file: %+v", v)
	}
	if query("team-c", tokC) != 200 || query("team-b", tokB) != 401 || query("team-a", tokReader) != 200 {
		t.Error("a broken file changed the policies in force")
	}
	writeFile("policies: [")
	standin.WaitFor(t, 10*time.Second, "the YAML error in the view", func() bool { return strings.Contains(view().LastError, "yaml") })
	if query("team-c", tokC) != 200 {
		t.Error("a broken file changed the policies in force")
	}
}

// TestAccessReloadUnderLoad: reloads through the admin API that change the
// inline policies while clients push with a token every config has: no
// request fails; the changed policies apply.
func TestAccessReloadUnderLoad(t *testing.T) {
	t.Parallel()
	cl := startAccessCluster(t)
	const tokExtra = "extra-token-0123456789abcdefghijklmnopqrstuv"
	config := func(extra bool, realm string) string {
		cfg := access.Config{Realm: realm, Policies: []access.Policy{{
			Name: "team-a-writer", Tenants: []string{"team-a"}, Scopes: []string{"metrics:write"},
			Tokens: []access.Token{{Hash: access.HashToken(tokWriter)}},
		}}}
		if extra {
			cfg.Policies = append(cfg.Policies, access.Policy{
				Name: "extra", Tenants: []string{"team-x"}, Scopes: []string{"metrics:write"},
				Tokens: []access.Token{{Hash: access.HashToken(tokExtra)}},
			})
		}
		policies, _ := json.Marshal(cfg)
		return fmt.Sprintf(`[{"handler": "metrics_gateway", "access_policies": %s, "proxy": {
			"default": {"url": "http://127.0.0.1:1"}, "distributor": {"url": %q}}}]`, policies, cl.Target())
	}
	c := testcaddy.Start(t, config(false, "r0"))
	body := standin.RemoteWriteBody(200, 1)
	pushAs := func(tenant, token string) (int, error) {
		resp, _, err := pushWith(c.Client, body, basic(tenant, token))
		if err != nil {
			return 0, err
		}
		return resp.StatusCode, nil
	}
	if code, err := pushAs("team-a", tokWriter); err != nil || code != 200 {
		t.Fatalf("push: %d %v", code, err)
	}
	if code, _ := pushAs("team-x", tokExtra); code != 401 {
		t.Fatalf("push with a token of no policy: %d", code)
	}
	cl.Distributors[0].Reset()

	var acked, retried, failures atomic.Int64
	var firstErr atomic.Value
	stop := runLoad(t, 4, func(int) {
		// Clients retry a push the old server closes unread (see pushRetrying).
		resp, _, err := pushWithRetrying(c.Client, body, basic("team-a", tokWriter), &retried)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if err != nil {
			failures.Add(1)
			firstErr.CompareAndSwap(nil, err)
		} else {
			acked.Add(1)
		}
	})
	for i := range 20 {
		if err := c.Reload(config(i%2 == 0, fmt.Sprintf("r%d", i+1))); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
	}
	stop()
	if n := failures.Load(); n > 0 {
		t.Errorf("%d pushes failed during reloads, first: %v", n, firstErr.Load())
	}
	if got := cl.Distributors[0].Requests(); got != acked.Load() {
		t.Errorf("the distributor got %d pushes, clients were acknowledged %d", got, acked.Load())
	}
	t.Logf("%d pushes acknowledged during 20 reloads, %d retried after a connection closed unread", acked.Load(), retried.Load())

	// The last config (i = 19) has no extra policy; the next one has.
	if code, _ := pushAs("team-x", tokExtra); code != 401 {
		t.Errorf("extra token without its policy: %d", code)
	}
	if err := c.Reload(config(true, "last")); err != nil {
		t.Fatal(err)
	}
	standin.WaitFor(t, 20*time.Second, "the extra policy", func() bool { code, _ := pushAs("team-x", tokExtra); return code == 200 })
	standin.WaitFor(t, 20*time.Second, "the old configs' gateways to go", func() bool { return caddymodule.LiveGateways() == 1 })
}
