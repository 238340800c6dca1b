package caddymodule_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/caddymodule"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// echo is what an echo backend answers: who it is and what it received.
type echo struct {
	Backend    string      `json:"backend"`
	Method     string      `json:"method"`
	RequestURI string      `json:"request_uri"`
	BodySHA256 string      `json:"body_sha256"`
	Header     http.Header `json:"header"`
}

// echoBackend is a real HTTP server that answers every request with an echo
// naming itself. The path /stream streams: it sends a first chunk, then
// waits for release before finishing.
type echoBackend struct {
	name    string
	srv     *httptest.Server
	release chan struct{}
	served  atomic.Int64
}

func startEchoBackend(t *testing.T, name string) *echoBackend {
	t.Helper()
	b := &echoBackend{name: name, release: make(chan struct{})}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *echoBackend) URL() string { return b.srv.URL }

func (b *echoBackend) serve(w http.ResponseWriter, r *http.Request) {
	b.served.Add(1)
	if strings.HasSuffix(r.URL.Path, "/stream") {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		fmt.Fprintf(w, "first chunk from %s\n", b.name)
		w.(http.Flusher).Flush()
		select {
		case <-b.release:
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
		fmt.Fprintln(w, "last chunk")
		return
	}
	body, _ := io.ReadAll(r.Body)
	sum := sha256.Sum256(body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Backend", b.name)
	_ = json.NewEncoder(w).Encode(echo{
		Backend:    b.name,
		Method:     r.Method,
		RequestURI: r.RequestURI,
		BodySHA256: hex.EncodeToString(sum[:]),
		Header:     r.Header,
	})
}

// startTenBackends starts one echo backend per component and returns them
// with a gateway handler config that uses all of them.
func startTenBackends(t *testing.T) (map[caddymodule.Component]*echoBackend, string) {
	t.Helper()
	backends := map[caddymodule.Component]*echoBackend{}
	proxy := map[string]any{}
	for _, c := range caddymodule.Components {
		b := startEchoBackend(t, string(c))
		backends[c] = b
		proxy[string(c)] = map[string]any{"url": b.URL()}
	}
	handler, _ := json.Marshal([]any{map[string]any{"handler": "metrics_gateway", "proxy": proxy}})
	return backends, string(handler)
}

// routedPaths are realistic requests and the component that must get them.
var routedPaths = []struct {
	method, uri string
	want        caddymodule.Component
}{
	{"POST", "/api/v1/push", caddymodule.ComponentDistributor},
	{"POST", "/api/v1/push/influx/write?db=x", caddymodule.ComponentDistributor},
	{"POST", "/otlp/v1/metrics", caddymodule.ComponentDistributor},
	{"GET", "/distributor/all_user_stats", caddymodule.ComponentDistributor},
	{"GET", "/distributor/ha_tracker", caddymodule.ComponentDistributor},
	{"POST", "/api/prom/push", caddymodule.ComponentDistributor},
	{"GET", "/ingester/ring", caddymodule.ComponentIngester},
	{"POST", "/ingester/flush?wait=true", caddymodule.ComponentIngester},
	{"GET", "/ingester/tsdb/tenant-1", caddymodule.ComponentIngester},
	{"GET", "/alertmanager", caddymodule.ComponentAlertmanager},
	{"GET", "/alertmanager/api/v2/alerts?active=true", caddymodule.ComponentAlertmanager},
	{"GET", "/multitenant_alertmanager/status", caddymodule.ComponentAlertmanager},
	{"GET", "/api/v1/alerts", caddymodule.ComponentAlertmanager},
	{"POST", "/api/v1/alerts", caddymodule.ComponentAlertmanager},
	{"DELETE", "/api/v1/alerts", caddymodule.ComponentAlertmanager},
	{"POST", "/prometheus/config/v1/rules/namespace", caddymodule.ComponentRuler},
	{"GET", "/prometheus/api/v1/rules?type=alert", caddymodule.ComponentRuler},
	{"GET", "/prometheus/api/v1/alerts", caddymodule.ComponentRuler},
	{"GET", "/ruler/ring", caddymodule.ComponentRuler},
	{"GET", "/ruler/rule_groups", caddymodule.ComponentRuler},
	{"GET", "/api/v1/rules/ns/group", caddymodule.ComponentRuler},
	{"GET", "/api/prom/rules", caddymodule.ComponentRuler},
	{"GET", "/api/prom/api/v1/rules", caddymodule.ComponentRuler},
	{"GET", "/api/prom/api/v1/alerts", caddymodule.ComponentRuler},
	{"GET", "/prometheus/api/v1/query?query=up&time=1700000000", caddymodule.ComponentQueryFrontend},
	{"POST", "/prometheus/api/v1/query_range", caddymodule.ComponentQueryFrontend},
	{"GET", "/prometheus/api/v1/series?match[]=up", caddymodule.ComponentQueryFrontend},
	{"GET", "/prometheus/api/v1/labels", caddymodule.ComponentQueryFrontend},
	{"GET", "/prometheus/api/v1/label/job/values", caddymodule.ComponentQueryFrontend},
	{"POST", "/prometheus/api/v1/read", caddymodule.ComponentQueryFrontend},
	{"GET", "/prometheus/api/v1/cardinality/label_names", caddymodule.ComponentQueryFrontend},
	{"GET", "/prometheus/api/v1/format_query?query=up", caddymodule.ComponentQueryFrontend},
	{"GET", "/api/prom/api/v1/query?query=up", caddymodule.ComponentQueryFrontend},
	{"GET", "/api/v1/status/buildinfo", caddymodule.ComponentQueryFrontend},
	{"POST", "/api/v1/upload/block/01HXYZ/start", caddymodule.ComponentCompactor},
	{"POST", "/api/v1/upload/block/01HXYZ/files?path=index", caddymodule.ComponentCompactor},
	{"GET", "/compactor/ring", caddymodule.ComponentCompactor},
	{"POST", "/compactor/delete_tenant", caddymodule.ComponentCompactor},
	{"GET", "/store-gateway/tenants", caddymodule.ComponentStoreGateway},
	{"GET", "/admin/api/v3/tenants", caddymodule.ComponentAdminAPI},
	{"POST", "/admin/api/v3/accesspolicies", caddymodule.ComponentAdminAPI},
	{"POST", "/graphite/metrics", caddymodule.ComponentGraphite},
	{"GET", "/graphite/render?target=a.b", caddymodule.ComponentGraphite},
	{"GET", "/config", caddymodule.ComponentDefault},
	{"GET", "/memberlist", caddymodule.ComponentDefault},
	{"GET", "/api/v1/user_limits", caddymodule.ComponentDefault},
	{"GET", "/debug/pprof/heap", caddymodule.ComponentDefault},
	{"GET", "/prometheusx", caddymodule.ComponentDefault},
}

func TestRoutesReachTheirBackends(t *testing.T) {
	t.Parallel()
	_, handler := startTenBackends(t)
	c := testcaddy.Start(t, handler)

	for i, p := range routedPaths {
		body := []byte(fmt.Sprintf("body %d of %s %s", i, p.method, p.uri))
		req, err := http.NewRequest(p.method, "http://gateway"+p.uri, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Scope-OrgID", "tenant-1")
		req.Header.Set("Authorization", "Basic dXNlcjpwYXNz")
		req.Header.Add("X-Multi", "a")
		req.Header.Add("X-Multi", "b")
		resp, respBody, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", p.method, p.uri, err)
		}
		var got echo
		if err := json.Unmarshal(respBody, &got); err != nil {
			t.Fatalf("%s %s: %s %q: %v", p.method, p.uri, resp.Status, respBody, err)
		}
		sum := sha256.Sum256(body)
		switch {
		case got.Backend != string(p.want):
			t.Errorf("%s %s reached %s, want %s", p.method, p.uri, got.Backend, p.want)
		case got.Method != p.method || got.RequestURI != p.uri:
			t.Errorf("%s %s arrived as %s %s", p.method, p.uri, got.Method, got.RequestURI)
		case got.BodySHA256 != hex.EncodeToString(sum[:]):
			t.Errorf("%s %s: body changed on the way", p.method, p.uri)
		case got.Header.Get("X-Scope-OrgID") != "tenant-1",
			got.Header.Get("Authorization") != "Basic dXNlcjpwYXNz",
			strings.Join(got.Header.Values("X-Multi"), ",") != "a,b":
			t.Errorf("%s %s: headers changed on the way: %v", p.method, p.uri, got.Header)
		}
	}
	if len(routedPaths) < 40 {
		t.Errorf("only %d paths checked", len(routedPaths))
	}
}

func TestLocalAnswers(t *testing.T) {
	t.Parallel()
	_, handler := startTenBackends(t)
	c := testcaddy.Start(t, handler)
	for path, want := range map[string]string{"/": "OK", "/ready": "ready"} {
		resp, body, err := c.Get(path)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || string(body) != want {
			t.Errorf("GET %s = %s %q, want 200 %q", path, resp.Status, body, want)
		}
		// A push sent to the gateway's own page (a client given the base
		// URL) is refused, not answered 200 as if ingested.
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodOptions} {
			req := standin.NewPush("http://gateway"+path, standin.RemoteWriteBody(10, 1), "tenant-1")
			req.Method = method
			resp, body, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("%s %s = %s %q (Allow %q), want 405 with Allow: GET, HEAD", method, path, resp.Status, body, resp.Header.Get("Allow"))
			}
		}
	}
}

func TestStreamingResponseIsNotBuffered(t *testing.T) {
	t.Parallel()
	backends, handler := startTenBackends(t)
	c := testcaddy.Start(t, handler)
	qf := backends[caddymodule.ComponentQueryFrontend]

	resp, err := c.Client.Get("http://gateway/prometheus/api/v1/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The backend holds the response open until released: if the gateway
	// buffered, this read would not return before the 30 s backstop.
	firstLine := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		firstLine <- line
	}()
	select {
	case line := <-firstLine:
		if line != "first chunk from query_frontend\n" {
			t.Errorf("first chunk = %q", line)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("first chunk did not arrive while the response was still open")
	}
	close(qf.release)
}

func TestUnsetComponentsUseDefault(t *testing.T) {
	t.Parallel()
	def := startEchoBackend(t, "default")
	dist := startEchoBackend(t, "distributor")
	handler := fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {
		"default": {"url": %q}, "distributor": {"url": %q}}}]`, def.URL(), dist.URL())
	c := testcaddy.Start(t, handler)
	for path, want := range map[string]string{
		"/api/v1/push":             "distributor",
		"/prometheus/api/v1/query": "default",
		"/ingester/ring":           "default",
		"/nothing":                 "default",
	} {
		_, body, err := c.Get(path)
		if err != nil {
			t.Fatal(err)
		}
		var got echo
		if err := json.Unmarshal(body, &got); err != nil || got.Backend != want {
			t.Errorf("GET %s reached %q (%v), want %s", path, got.Backend, err, want)
		}
	}
}

// TestSeveralURLsAndReverseProxyBlock checks that a backend with several
// URLs and a reverse_proxy config balances over them with that config.
func TestSeveralURLsAndReverseProxyBlock(t *testing.T) {
	t.Parallel()
	a, b := startEchoBackend(t, "qf-a"), startEchoBackend(t, "qf-b")
	def := startEchoBackend(t, "default")
	handler := fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {
		"default": {"url": %q},
		"query_frontend": {"url": "%s %s", "reverse_proxy": {
			"load_balancing": {"selection_policy": {"policy": "round_robin"}},
			"headers": {"request": {"set": {"X-Via-Gateway": ["yes"]}}}
		}}}}]`, def.URL(), a.URL(), b.URL())
	c := testcaddy.Start(t, handler)
	seen := map[string]int{}
	for i := 0; i < 10; i++ {
		_, body, err := c.Get("/prometheus/api/v1/query?query=up")
		if err != nil {
			t.Fatal(err)
		}
		var got echo
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatal(err)
		}
		if got.Header.Get("X-Via-Gateway") != "yes" {
			t.Errorf("reverse_proxy headers config not applied: %v", got.Header)
		}
		seen[got.Backend]++
	}
	if seen["qf-a"] != 5 || seen["qf-b"] != 5 {
		t.Errorf("round_robin over two URLs: %v", seen)
	}
}

func TestTenant(t *testing.T) {
	t.Parallel()
	def := startEchoBackend(t, "default")
	tenantOf := func(c *testcaddy.Caddy, header string, user string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://gateway/api/v1/push", strings.NewReader("x"))
		if header != "" {
			req.Header.Set("X-Scope-OrgID", header)
		}
		if user != "" {
			req.SetBasicAuth(user, "secret")
		}
		resp, body, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			return resp.StatusCode, string(body)
		}
		var got echo
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatal(err)
		}
		if user != "" && got.Header.Get("Authorization") == "" {
			t.Error("Authorization was not passed through")
		}
		return resp.StatusCode, got.Header.Get("X-Scope-OrgID")
	}

	t.Run("default_tenant", func(t *testing.T) {
		c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "default_tenant": "anonymous",
			"proxy": {"default": {"url": %q}}}]`, def.URL()))
		if code, got := tenantOf(c, "", ""); code != 200 || got != "anonymous" {
			t.Errorf("no header: %d %q, want anonymous", code, got)
		}
		if code, got := tenantOf(c, "team-a", ""); code != 200 || got != "team-a" {
			t.Errorf("client header: %d %q, want team-a", code, got)
		}
	})

	t.Run("tenant must be one valid ID", func(t *testing.T) {
		c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "tenant": "{http.request.header.X-Team}",
			"proxy": {"default": {"url": %q}}}]`, def.URL()))
		for team, want := range map[string]int{"team-a": 200, "team-a|team-b": 401, "..": 401, "": 401} {
			req, _ := http.NewRequest("GET", "http://gateway/prometheus/api/v1/query", nil)
			req.Header.Set("X-Team", team)
			resp, _, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != want {
				t.Errorf("tenant %q: %s, want %d", team, resp.Status, want)
			}
		}
	})

	t.Run("invalid tenants are refused on every route", func(t *testing.T) {
		cl := startCluster(t, 1)
		c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {
			"default": {"url": %q}, "distributor": {"url": %q}}}]`, def.URL(), cl.Target()))
		before := def.served.Load()
		for _, tc := range []struct{ tenant, rule string }{
			{strings.Repeat("t", 200), "too long: max 150 characters"},
			{"team/a", "unsupported character '/'"},
			{"team-a|team/b", "unsupported character '/'"},
		} {
			for _, path := range []string{"/api/v1/push", "/prometheus/api/v1/query", "/config"} {
				req, _ := http.NewRequest("POST", "http://gateway"+path, strings.NewReader("x"))
				req.Header.Set("X-Scope-OrgID", tc.tenant)
				resp, body, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != 400 || !strings.Contains(string(body), tc.rule) {
					t.Errorf("%s as %q: %s %q, want 400 naming %q", path, tc.tenant, resp.Status, body, tc.rule)
				}
			}
		}
		if n := def.served.Load() - before; n != 0 {
			t.Errorf("%d requests with invalid tenants reached the HTTP backend", n)
		}
		if n := cl.Distributors[0].Requests(); n != 0 {
			t.Errorf("%d requests with invalid tenants reached the distributor", n)
		}
	})

	t.Run("tenant from basic_auth", func(t *testing.T) {
		// "secret", hashed with bcrypt (cost 4, to keep the test fast).
		const hash = "$2a$04$ZKWzJYTyklPUCVglD2MNBexnWXWTra73SM0xp9OGjueFAsywQd4W2"
		c := testcaddy.StartCaddyfile(t, fmt.Sprintf(`
:80 {
	@push path /api/v1/push
	basic_auth @push {
		alice %s
	}
	metrics_gateway {
		proxy {
			default %s
		}
		tenant {http.auth.user.id}
	}
}`, hash, def.URL()))
		if code, got := tenantOf(c, "", "alice"); code != 200 || got != "alice" {
			t.Errorf("authenticated: %d %q, want alice", code, got)
		}
		if code, got := tenantOf(c, "bob", "alice"); code != 200 || got != "alice" {
			t.Errorf("spoofed header: %d %q, want alice", code, got)
		}
		// Not under basic_auth: the placeholder is empty.
		req, _ := http.NewRequest("GET", "http://gateway/prometheus/api/v1/query", nil)
		req.Header.Set("X-Scope-OrgID", "bob")
		resp, body, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 401 || !strings.Contains(string(body), "no org id") {
			t.Errorf("unauthenticated: %s %q, want 401 no org id", resp.Status, body)
		}
	})
}

// TestReloadSwitchesBackends reloads through the admin API while requests
// are in flight: every request succeeds, traffic moves to the new backends,
// and goroutines do not pile up over 20 reloads.
func TestReloadSwitchesBackends(t *testing.T) {
	oldDef, newDef := startEchoBackend(t, "old"), startEchoBackend(t, "new")
	config := func(url string) string {
		return fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}, "distributor": {"url": %q}}}]`, url, url)
	}
	c := testcaddy.Start(t, config(oldDef.URL()))
	var retried atomic.Int64
	get := func() (string, error) {
		resp, body, err := c.Get("/api/v1/push")
		for try := 0; err != nil && try < 5; try++ {
			// No response at all: Go's HTTP/1 server closes, unread, a
			// request that arrives on a connection in the instant the old
			// server stops. It never reached the gateway (the backends'
			// count below proves it); remote-write clients retry such
			// network errors, and so does this one.
			retried.Add(1)
			resp, body, err = c.Get("/api/v1/push")
		}
		if err != nil {
			return "", err
		}
		if resp.StatusCode != 200 {
			return "", fmt.Errorf("%s: %s", resp.Status, body)
		}
		var got echo
		err = json.Unmarshal(body, &got)
		return got.Backend, err
	}
	if b, err := get(); err != nil || b != "old" {
		t.Fatalf("before reload: %q %v", b, err)
	}
	c.Client.CloseIdleConnections()
	goroutinesBefore := standin.NumGoroutines()
	servedBefore := oldDef.served.Load() + newDef.served.Load()

	// Load in the background for the whole reload sequence.
	var mu sync.Mutex
	var failures []error
	succeeded := 0
	stop := runLoad(t, 4, func(int) {
		_, err := get()
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failures = append(failures, err)
		} else {
			succeeded++
		}
	})

	for i := 0; i < 20; i++ {
		url := oldDef.URL()
		if i%2 == 0 {
			url = newDef.URL()
		}
		if err := c.Reload(config(url)); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
	}
	stop()
	if len(failures) > 0 {
		t.Errorf("%d requests failed during reloads, first: %v", len(failures), failures[0])
	}
	if served := oldDef.served.Load() + newDef.served.Load() - servedBefore; served != int64(succeeded) {
		t.Errorf("backends served %d requests, clients got %d answers", served, succeeded)
	}
	t.Logf("%d requests during 20 reloads, %d retried after a connection closed unread", succeeded, retried.Load())
	// The last config (i=19) points at old; one more switches to new.
	if err := c.Reload(config(newDef.URL())); err != nil {
		t.Fatal(err)
	}
	// The old server stops right after /load answers; a connection it
	// accepted in that instant may still see the old config, so poll.
	deadline := time.Now().Add(20 * time.Second)
	b, err := get()
	for (err != nil || b != "new") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		b, err = get()
	}
	if err != nil || b != "new" {
		t.Errorf("after reload: %q %v, want new", b, err)
	}
	c.Client.CloseIdleConnections()
	standin.WaitGoroutines(t, goroutinesBefore, 10)
}

// TestExampleCaddyfileRuns starts the gateway from examples/Caddyfile (its
// listeners moved to the test's sockets) and asks it whether it is ready.
func TestExampleCaddyfileRuns(t *testing.T) {
	t.Parallel()
	caddyfile, err := os.ReadFile("../examples/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	c := testcaddy.StartCaddyfile(t, string(caddyfile))
	resp, body, err := c.Get("/ready")
	if err != nil || resp.StatusCode != 200 || string(body) != "ready" {
		t.Fatalf("GET /ready: %v %v %q", resp, err, body)
	}
	code, body, err := c.AdminGet("/metrics_gateway/backends")
	if err != nil || code != 200 || !strings.Contains(string(body), `"target":"dns:///localhost:9095"`) {
		t.Errorf("GET /metrics_gateway/backends: %d %v %s", code, err, body)
	}
}

// runLoad calls do from n goroutines, over and over (at most 100000 times
// each), until the returned stop is called or the test ends; stop waits for
// them to finish.
func runLoad(t *testing.T, n int, do func(worker int)) (stop func()) {
	done := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		wg.Go(func() {
			for i := 0; i < 100000; i++ {
				select {
				case <-done:
					return
				default:
				}
				do(w)
			}
		})
	}
	stop = func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
	t.Cleanup(stop)
	return stop
}

// TestHTTPSAndH2CBackends checks that https:// and h2c:// URLs select the
// reverse_proxy transport they need.
func TestHTTPSAndH2CBackends(t *testing.T) {
	t.Parallel()
	proto := func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%s %v", r.Proto, r.TLS != nil) }

	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(proto))
	t.Cleanup(tlsSrv.Close)

	h2c := httptest.NewUnstartedServer(http.HandlerFunc(proto))
	h2c.Config.Protocols = new(http.Protocols)
	h2c.Config.Protocols.SetUnencryptedHTTP2(true)
	h2c.Start()
	t.Cleanup(h2c.Close)

	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {
		"default": {"url": %q},
		"ruler": {"url": %q, "reverse_proxy": {"transport": {"protocol": "http", "tls": {"insecure_skip_verify": true}}}}}}]`,
		strings.Replace(h2c.URL, "http://", "h2c://", 1), strings.Replace(tlsSrv.URL, "http://", "https://", 1)))
	for path, want := range map[string]string{"/ruler/ring": "HTTP/1.1 true", "/config": "HTTP/2.0 false"} {
		resp, body, err := c.Get(path)
		if err != nil || resp.StatusCode != 200 || string(body) != want {
			t.Errorf("GET %s: %v %v %q, want %q", path, resp, err, body, want)
		}
	}
}

// TestH2CBackendDiesMidUpload: an HTTP/2 backend that resets the stream
// while the client (over HTTP/2, as Prometheus' remote write speaks over
// TLS) is still sending the body is the backend's failure, 502, which a
// remote-write client retries, not the client's 400 (Go's HTTP/2 transport
// closes the body it was reading).
func TestH2CBackendDiesMidUpload(t *testing.T) {
	t.Parallel()
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadFull(r.Body, make([]byte, 10))
		panic(http.ErrAbortHandler) // RST_STREAM mid-upload
	}))
	backend.Config.Protocols = new(http.Protocols)
	backend.Config.Protocols.SetUnencryptedHTTP2(true)
	backend.Start()
	t.Cleanup(backend.Close)
	c := testcaddy.StartJSON(t, func(c *testcaddy.Caddy) string {
		return fmt.Sprintf(`{"admin": {"listen": "unix/%s", "config": {"persist": false}},
		"apps": {"http": {"servers": {"gateway": {"listen": ["unix/%s"], "automatic_https": {"disable": true}, "protocols": ["h1", "h2c"],
			"routes": [{"handle": [{"handler": "metrics_gateway", "proxy": {"default": {"url": "h2c://%s"}}}]}]}}}}}`,
			c.AdminSock, c.HTTPSock, backend.Listener.Addr())
	})
	client := h2cClient(t, c)
	for try := range 3 {
		pr, pw := io.Pipe()
		go func() {
			for range 50 { // until the answer: the client is still sending
				if _, err := pw.Write([]byte("0123456789")); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond) // a slow client's pace, not synchronisation
			}
			pw.Close()
		}()
		req, _ := http.NewRequest(http.MethodPost, "http://gateway"+standin.PushPath, pr)
		req.Header.Set("X-Scope-OrgID", "a")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		pw.CloseWithError(io.ErrClosedPipe)
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("try %d: the backend died mid-upload: %d %q, want 502", try, resp.StatusCode, b)
		}
	}
}
