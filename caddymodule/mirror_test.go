package caddymodule_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
	"github.com/metrics-gateway/metrics_gateway/mirror"
)

// mirrorCluster is a second cluster of distributor stand-ins, its DNS name
// apart from the primary's.
func mirrorCluster(t *testing.T, n int) *standin.Cluster {
	t.Helper()
	m, err := standin.StartCluster("mirror-distributor.mimir-new.test", n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	for _, d := range m.Distributors {
		d.KeepRecords(100000)
	}
	return m
}

// mirrorCopies reads metrics_gateway_mirror_requests_total of a mirror
// and result (the metrics are the process's: other tests' mirrors have
// other names).
func mirrorCopies(t *testing.T, c *testcaddy.Caddy, mirror, result string) float64 {
	t.Helper()
	return adminMetricSum(t, c, "metrics_gateway_mirror_requests_total", `mirror="`+mirror+`"`, `result="`+result+`"`)
}

// pushAs pushes body as tenant through c and returns the status.
func pushAs(t *testing.T, client *http.Client, tenant string, body []byte) (int, time.Duration) {
	t.Helper()
	req := newPush(body, func(h http.Header) {
		asTenant(tenant)(h)
		basic(tenant, "the-client-secret")(h) // for the primary, never for a mirror
	})
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Errorf("push as %s: %v", tenant, err)
		return 0, 0
	}
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}

// TestMirrorTenants: 3 primary and 2 mirror distributors; 4 keep-alive
// clients push as three tenants; every push succeeds, and the mirror
// cluster gets exactly the pushes of the listed tenants, with the same
// sample count and tenant, and none of the other's. Queries and rule
// changes, sent to the same cluster, are never mirrored.
func TestMirrorTenants(t *testing.T) {
	t.Parallel()
	const clients, pushes = 4, 60
	cl, m := startCluster(t, 3), mirrorCluster(t, 2)
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
		"mirrors": [{"url": [%q], "tenants": ["team-a", "team-b"]}]}]`, cl.Target(), m.Target()))
	errs := fromClients(t, c, clients, pushes, func(client *http.Client, j int) error {
		tenant := []string{"team-a", "team-b", "team-c"}[j%3]
		if code, _ := pushAs(t, client, tenant, standin.RemoteWriteBody(10, 1)); code != http.StatusOK {
			return fmt.Errorf("push as %s: %d", tenant, code)
		}
		return nil
	})
	for _, path := range []string{"/prometheus/api/v1/query?query=up", "/prometheus/config/v1/rules/ns"} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			req, _ := http.NewRequest(method, "http://gateway"+path, strings.NewReader("query=up"))
			standin.SetPushHeaders(req.Header, "team-a")
			if _, _, err := c.Do(req); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(errs) > 0 {
		t.Fatalf("%d of %d pushes failed, the first: %v", len(errs), clients*pushes, errs[0])
	}
	want := clients * pushes * 2 / 3
	standin.WaitFor(t, 20*time.Second, "the copies answered", func() bool { return mirrorCopies(t, c, m.Target(), "ok") == float64(want) })
	perTenant := map[string]int{}
	for _, d := range m.Distributors {
		for _, rec := range d.Records() {
			perTenant[rec.Tenant]++
			if rec.URL != standin.PushPath || rec.Method != http.MethodPost {
				t.Errorf("mirrored %s %s", rec.Method, rec.URL)
			}
			if v := rec.Header.Get("Authorization"); v != "" {
				t.Errorf("the mirror got the client's Authorization %q", v)
			}
		}
	}
	if perTenant["team-a"] != want/2 || perTenant["team-b"] != want/2 || perTenant["team-c"] != 0 || len(perTenant) != 2 {
		t.Errorf("the mirror got %v, want %d pushes each of team-a and team-b and nothing else", perTenant, want/2)
	}
	var mirrorSamples int64
	for _, d := range m.Distributors {
		mirrorSamples += d.Samples()
	}
	if mirrorSamples != int64(want*10) {
		t.Errorf("the mirror got %d samples, want %d", mirrorSamples, want*10)
	}
	if spread := m.Requests(); spread[0] == 0 || spread[1] == 0 {
		t.Errorf("the mirror's distributors got %v: its own balancing should use both", spread)
	}
}

// TestMirrorOnlyAccepted: a push the primary refuses or fails is not
// copied (the client retries it, and the copy of the retry follows).
func TestMirrorOnlyAccepted(t *testing.T) {
	t.Parallel()
	cl, m := startCluster(t, 1), mirrorCluster(t, 1)
	var n atomic.Int64
	cl.Distributors[0].SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		switch n.Add(1) % 3 {
		case 1:
			http.Error(w, "out of order sample", http.StatusBadRequest)
			return true
		case 2:
			return standin.Answer503(w, r)
		}
		return false
	})
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
		"mirrors": [{"url": [%q]}]}]`, cl.Target(), m.Target()))
	client := oneConnClient(t, c)
	accepted := 0
	for i := 0; i < 30; i++ {
		if code, _ := pushAs(t, client, "team-a", standin.RemoteWriteBody(2, 1)); code == http.StatusOK {
			accepted++
		}
	}
	standin.WaitFor(t, 20*time.Second, "the copies", func() bool { return mirrorCopies(t, c, m.Target(), "ok") == float64(accepted) })
	if got := m.Distributors[0].Requests(); got != int64(accepted) || accepted != 10 {
		t.Errorf("the mirror got %d pushes; the primary accepted %d of 30 (every third)", got, accepted)
	}
}

// TestMirrorPercent: percent 50 over 100 tenants mirrors 30 to 70 of them,
// each with all of its pushes or none.
func TestMirrorPercent(t *testing.T) {
	t.Parallel()
	cl, m := startCluster(t, 1), mirrorCluster(t, 1)
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
		"mirrors": [{"url": [%q], "percent": 50}]}]`, cl.Target(), m.Target()))
	client := oneConnClient(t, c)
	for round := 0; round < 2; round++ {
		for i := 0; i < 100; i++ {
			if code, _ := pushAs(t, client, fmt.Sprintf("tenant-%d", i), standin.RemoteWriteBody(5, 1)); code != http.StatusOK {
				t.Fatalf("push: %d", code)
			}
		}
	}
	// The tenants the mirror package picks at percent 50: every copy of
	// theirs, and only those, must arrive.
	pick, err := mirror.New(nil, mirror.Options{Percent: 50})
	if err != nil {
		t.Fatal(err)
	}
	defer pick.Close()
	want := 0
	picked := map[string]bool{}
	for i := 0; i < 100; i++ {
		if tenant := fmt.Sprintf("tenant-%d", i); pick.Mirrors(tenant) {
			picked[tenant] = true
			want += 2
		}
	}
	standin.WaitFor(t, 20*time.Second, "every copy answered", func() bool {
		return mirrorCopies(t, c, m.Target(), "ok") == float64(want) && len(m.Distributors[0].Records()) == want
	})
	got := map[string]int{}
	for _, r := range m.Distributors[0].Records() {
		got[r.Tenant]++
	}
	for tenant, n := range got {
		if !picked[tenant] || n != 2 {
			t.Errorf("tenant %s: %d copies, want %d", tenant, n, map[bool]int{true: 2}[picked[tenant]])
		}
	}
	_, errs := m.Distributors[0].CheckWholeTenants(2, 30, 70)
	for _, err := range errs {
		t.Errorf("mirrored at percent 50: %v", err)
	}
}

// TestMirrorDownThenHung: while the mirror is down (connections refused),
// then hung (answers nothing), every push succeeds without waiting for it,
// the copies are counted failed, timed out or dropped, and once the mirror
// is back it gets pushes again.
func TestMirrorDownThenHung(t *testing.T) {
	const timeout = 2 * time.Second
	cl, m := startCluster(t, 2), mirrorCluster(t, 1)
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
		"mirrors": [{"url": [%q], "max_in_flight": 8, "timeout": %q, "retries": 0}]}]`, cl.Target(), m.Target(), timeout))
	client := oneConnClient(t, c)
	body := standin.RemoteWriteBody(100, 1)
	pushAll := func(phase string, n int, after func(i int)) {
		t.Helper()
		var slowest time.Duration
		for i := 0; i < n; i++ {
			code, took := pushAs(t, client, "team-a", body)
			if code != http.StatusOK {
				t.Fatalf("%s: push %d got %d", phase, i, code)
			}
			slowest = max(slowest, took)
			if after != nil {
				after(i)
			}
		}
		// Behaviour, not speed: no push waited for the mirror's timeout.
		if slowest >= timeout {
			t.Errorf("%s: a push took %v, as long as the mirror's timeout", phase, slowest)
		}
		t.Logf("%s: %d pushes, slowest %v", phase, n, slowest)
	}
	// One copy at a time: while the mirror's connection is still being
	// made, quick pushes would fill max_in_flight and drop copies.
	pushAll("mirror healthy", 20, func(i int) {
		standin.WaitFor(t, 20*time.Second, "the copy", func() bool { return mirrorCopies(t, c, m.Target(), "ok") == float64(i+1) })
	})

	addr := m.Servers[0].Addr()
	m.Servers[0].Stop()
	standin.WaitFor(t, 20*time.Second, "the mirror's endpoint refusing connections", func() bool {
		return mirrorEndpointState(t, c) == "TRANSIENT_FAILURE"
	})
	calls := adminMetricSum(t, c, "metrics_gateway_grpc_requests_total", `backend="mirror"`)
	pushAll("mirror down", 50, nil)
	standin.WaitFor(t, 20*time.Second, "the copies to a mirror that is down counted", func() bool {
		return mirrorCopies(t, c, m.Target(), "failed")+mirrorCopies(t, c, m.Target(), "dropped")+mirrorCopies(t, c, m.Target(), "timeout") == 50
	})
	// A copy to a mirror whose every endpoint refuses connections fails
	// without a call; the endpoint tries to connect again once per backoff
	// (1 s or more), and a copy made meanwhile is sent.
	if n := adminMetricSum(t, c, "metrics_gateway_grpc_requests_total", `backend="mirror"`) - calls; n > 10 {
		t.Errorf("%v calls for 50 copies to a mirror that refuses connections, want (almost) none", n)
	}

	back, err := standin.StartGRPC(addr, m.Distributors[0])
	if err != nil {
		t.Skipf("could not listen on %s again: %v", addr, err)
	}
	t.Cleanup(back.Stop)
	before := m.Distributors[0].Requests()
	standin.WaitFor(t, 30*time.Second, "the mirror getting pushes again", func() bool {
		pushAs(t, client, "team-a", body)
		return m.Distributors[0].Requests() > before
	})

	release := make(chan struct{})
	var held atomic.Int64
	m.Distributors[0].SetBehavior(standin.HoldUntil(release, &held))
	dropped := mirrorCopies(t, c, m.Target(), "dropped")
	pushAll("mirror hung", 30, nil)
	if n := mirrorCopies(t, c, m.Target(), "dropped") - dropped; n < 30-8 {
		t.Errorf("%v copies dropped with the mirror hung, want at least %d (max_in_flight 8)", n, 30-8)
	}
	standin.WaitFor(t, 20*time.Second, "the held copies timed out", func() bool { return mirrorCopies(t, c, m.Target(), "timeout") >= 8 })
	close(release)
	m.Distributors[0].SetBehavior(nil)
	before = m.Distributors[0].Requests()
	standin.WaitFor(t, 30*time.Second, "the mirror getting pushes once it answers again", func() bool {
		pushAs(t, client, "team-a", body)
		return m.Distributors[0].Requests() > before+1
	})
}

// mirrorEndpointState is the state of the one endpoint of c's one mirror
// in the admin view ("" when there is none).
func mirrorEndpointState(t *testing.T, c *testcaddy.Caddy) string {
	t.Helper()
	for _, bs := range backendStatuses(t, c) {
		if bs.Component == "mirror" && len(bs.Endpoints) == 1 {
			return bs.Endpoints[0].State
		}
	}
	return ""
}

// TestMirrorOverH2C: a mirror at an h2c:// URL gets the copies over
// HTTP/2 without TLS, as an h2c:// backend would (the scheme sets the
// transport's versions).
func TestMirrorOverH2C(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	d := standin.NewDistributor("mirror-over-h2c")
	var overH2 atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 {
			overH2.Add(1)
		}
		d.ServeHTTP(w, r)
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
		"mirrors": [{"url": ["h2c://%s"]}]}]`, cl.Target(), srv.Listener.Addr()))
	client := oneConnClient(t, c)
	for i := 0; i < 5; i++ {
		if code, _ := pushAs(t, client, "team-a", standin.RemoteWriteBody(7, 1)); code != http.StatusOK {
			t.Fatalf("push: %d", code)
		}
	}
	standin.WaitFor(t, 20*time.Second, "the copies", func() bool { return d.Samples() == 35 })
	if n := overH2.Load(); n != 5 {
		t.Errorf("%d of 5 copies over HTTP/2", n)
	}
}

// TestMirrorOverHTTP: a mirror at an http:// URL gets the copies through
// reverse_proxy's transport, with the tenant and body.
func TestMirrorOverHTTP(t *testing.T) {
	t.Parallel()
	d, c := httpMirrorGateway(t, "mirror-over-http")
	client := oneConnClient(t, c)
	for i := 0; i < 10; i++ {
		if code, _ := pushAs(t, client, "team-a", standin.RemoteWriteBody(7, 1)); code != http.StatusOK {
			t.Fatalf("push: %d", code)
		}
	}
	standin.WaitFor(t, 20*time.Second, "the copies", func() bool { return d.Samples() == 70 })
	for _, rec := range d.Records() {
		if rec.Tenant != "team-a" || rec.URL != standin.PushPath || rec.Header.Get("Authorization") != "" {
			t.Errorf("HTTP mirror got %s as %q, Authorization %q", rec.URL, rec.Tenant, rec.Header.Get("Authorization"))
		}
	}
	// And an HTTP primary with a dns: mirror: the body is read once, for
	// both; a push the primary refuses (the client will retry it) is not
	// copied.
	m := mirrorCluster(t, 1)
	primaryD := standin.NewDistributor("primary-over-http")
	var early atomic.Int64
	primaryD.SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		if early.Add(1)%2 == 0 {
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return true
		}
		return false
	})
	primary := httptest.NewServer(primaryD)
	t.Cleanup(primary.Close)
	if err := c.Reload(fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
		"mirrors": [{"url": [%q]}]}]`, primary.URL, m.Target())); err != nil {
		t.Fatal(err)
	}
	client = oneConnClient(t, c)
	teamB := func(h http.Header) { asTenant("team-b")(h); basic("team-b", "the-client-secret")(h) }
	accepted := 0
	for i := 0; i < 10; i++ {
		// Retrying network errors: right after the reload, the old server,
		// in the instant it stops, may still accept the new connection and
		// close it with the push unread (see pushRetrying); the primary
		// never saw that push.
		resp, _, err := pushWithRetrying(client, standin.RemoteWriteBody(3, 1), teamB, nil)
		if err != nil {
			t.Fatalf("push to the HTTP primary: %v", err)
		}
		switch resp.StatusCode {
		case http.StatusOK:
			accepted++
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("push to the HTTP primary: %d", resp.StatusCode)
		}
	}
	standin.WaitFor(t, 20*time.Second, "the copies of the HTTP primary's accepted pushes", func() bool {
		return m.Distributors[0].Samples() == int64(3*accepted)
	})
	if accepted == 10 || accepted == 0 {
		t.Errorf("%d of 10 pushes accepted: the primary was to refuse every other one", accepted)
	}
}

// TestMirrorInAdminView: the admin view lists the mirror with its endpoints.
func TestMirrorInAdminView(t *testing.T) {
	t.Parallel()
	cl, m := startCluster(t, 1), mirrorCluster(t, 2)
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
		"mirrors": [{"url": [%q]}]}]`, cl.Target(), m.Target()))
	standin.WaitFor(t, 20*time.Second, "the mirror's 2 endpoints in the admin view", func() bool {
		for _, bs := range backendStatuses(t, c) {
			if bs.Component == "mirror" && bs.Target == m.Target() && len(bs.Endpoints) == 2 {
				return true
			}
		}
		return false
	})
}

// TestMirrorReloadKeepsCopiesInFlight: a push is at its distributor while a
// reload changes a mirror option (a new Mirror replaces the old one). When
// the primary answers, its copy still goes out through the old Mirror, which
// lasts until the old config's requests are done; a copy offered to it
// after that is counted dropped, never lost without a trace.
func TestMirrorReloadKeepsCopiesInFlight(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	m := mirrorCluster(t, 1)
	cfg := func(maxInFlight int) string {
		return fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
		"mirrors": [{"url": [%q], "max_in_flight": %d}]}]`, cl.Target(), m.Target(), maxInFlight)
	}
	c := testcaddy.Start(t, cfg(100))
	if code, _ := pushAs(t, oneConnClient(t, c), "team-a", standin.RemoteWriteBody(3, 1)); code != http.StatusOK {
		t.Fatalf("push: %d", code)
	}
	standin.WaitFor(t, 20*time.Second, "the first copy", func() bool { return m.Distributors[0].Samples() == 3 })

	release := make(chan struct{})
	cl.Distributors[0].SetBehavior(func(http.ResponseWriter, *http.Request) bool { <-release; return false })
	served := cl.Distributors[0].Requests()
	done := make(chan int, 1)
	go func() {
		code, _ := pushAs(t, oneConnClient(t, c), "team-a", standin.RemoteWriteBody(5, 1))
		done <- code
	}()
	standin.WaitFor(t, 20*time.Second, "the push at its distributor", func() bool { return cl.Distributors[0].Requests() > served })
	if err := c.Reload(cfg(101)); err != nil {
		t.Fatal(err)
	}
	cl.Distributors[0].SetBehavior(nil)
	close(release)
	if code := <-done; code != http.StatusOK {
		t.Fatalf("the push in flight across the reload: %d", code)
	}
	standin.WaitFor(t, 20*time.Second, "its copy at the mirror (3 + 5 samples)", func() bool { return m.Distributors[0].Samples() == 8 })
	// The copy is counted once its answer is back, after the mirror has it.
	standin.WaitFor(t, 20*time.Second, "both copies counted ok", func() bool {
		return mirrorCopies(t, c, m.Target(), "ok") == 2
	})
}

// TestHTTPMirrorAddsNoUserAgent: a client that sends no User-Agent gets
// none in its copy either (Go's transport would add Go-http-client), as
// reverse_proxy does for the primary.
func TestHTTPMirrorAddsNoUserAgent(t *testing.T) {
	t.Parallel()
	d, c := httpMirrorGateway(t, "ua-mirror")
	req := standin.NewPush("http://gateway"+standin.PushPath, standin.RemoteWriteBody(4, 1), "team-a")
	req.Header["User-Agent"] = nil // the client sends none
	resp, err := oneConnClient(t, c).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	standin.WaitFor(t, 10*time.Second, "the copy", func() bool { return len(d.Records()) == 1 })
	if ua, ok := d.Records()[0].Header["User-Agent"]; ok {
		t.Errorf("the client sent no User-Agent; the mirror got %q", ua)
	}
}

// httpMirrorGateway is a gateway in front of a gRPC stand-in cluster with
// an HTTP mirror: an HTTP distributor stand-in that records what it gets.
func httpMirrorGateway(t *testing.T, name string) (*standin.Distributor, *testcaddy.Caddy) {
	t.Helper()
	cl := startCluster(t, 1)
	d := standin.NewDistributor(name)
	d.KeepRecords(100)
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	return d, testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
		"mirrors": [{"url": [%q]}]}]`, cl.Target(), srv.URL))
}

// httpPrimaryBuffered is the bytes the mirrored writes to the HTTP backend
// default hold in its max_buffered_bytes.
func httpPrimaryBuffered(t *testing.T, c *testcaddy.Caddy) int64 {
	t.Helper()
	for _, bs := range backendStatuses(t, c) {
		if bs.Component == "default" {
			return bs.BufferedBytes
		}
	}
	t.Fatal("no backend default in the admin view")
	return 0
}

// TestHTTPPrimarySlowReaderHoldsNoBody: with mirrors, a write to an HTTP
// primary is read into a buffer of the backend's max_buffered_bytes. Once
// the primary has answered, the body leaves the bound, also while a client
// that does not read keeps the answer from being written (as on the gRPC
// path, grpcpush's TestSlowReaderHoldsNoBody).
func TestHTTPPrimarySlowReaderHoldsNoBody(t *testing.T) {
	t.Parallel()
	m := mirrorCluster(t, 1)
	var answered atomic.Int64
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		answered.Add(1)
		http.Error(w, strings.Repeat("x", 4<<20), http.StatusTooManyRequests) // a long refusal
	}))
	t.Cleanup(primary.Close)
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
		"mirrors": [{"url": [%q]}]}]`, primary.URL, m.Target()))
	push := standin.NewPush("http://gateway"+standin.PushPath, []byte(strings.Repeat("b", 1<<20)), "team-a")
	resp, err := c.Client.Do(push)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close() // unread: the rest of the answer waits in the gateway
	standin.WaitFor(t, 20*time.Second, "the primary to read the push and answer", func() bool { return answered.Load() == 1 })
	standin.WaitFor(t, 20*time.Second, "the body out of max_buffered_bytes", func() bool { return httpPrimaryBuffered(t, c) == 0 })
}

// TestHTTPPrimaryStreamsUnmirroredWrites: a write of a tenant no mirror
// takes is streamed to an HTTP primary as without mirrors, not read whole
// into max_buffered_bytes first.
func TestHTTPPrimaryStreamsUnmirroredWrites(t *testing.T) {
	t.Parallel()
	m := mirrorCluster(t, 1)
	arrived := make(chan struct{}, 1)
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(primary.Close)
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
		"mirrors": [{"url": [%q], "tenants": ["team-a"]}]}]`, primary.URL, m.Target()))
	// Half the body, then nothing until the primary has the request.
	const size = 1 << 20
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	go func() { _, _ = pw.Write(make([]byte, size/2)) }()
	push := standin.NewPush("http://gateway"+standin.PushPath, nil, "team-b")
	push.Body, push.ContentLength = pr, size
	answer := make(chan error, 1)
	go func() {
		resp, _, err := c.Do(push)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s", resp.Status)
		}
		answer <- err
	}()
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("the primary got no request in 20s: the half-sent body of team-b (no mirror takes it) was being read whole first")
	}
	if n := httpPrimaryBuffered(t, c); n != 0 {
		t.Errorf("%d bytes of team-b's write in max_buffered_bytes", n)
	}
	go func() { _, _ = pw.Write(make([]byte, size/2)) }()
	if err := <-answer; err != nil {
		t.Fatalf("the push: %v", err)
	}
}

// TestHTTPMirroredWriteFailureAnswer: a write some mirror takes fails on an
// HTTP primary that is down as one no mirror takes does: the gateway's
// line and Retry-After, not Caddy's empty answer.
func TestHTTPMirroredWriteFailureAnswer(t *testing.T) {
	t.Parallel()
	m := startEchoBackend(t, "mirror")
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway",
		"proxy": {"default": {"url": "http://127.0.0.1:1",
			"reverse_proxy": {"health_checks": {"passive": {"fail_duration": "1m", "max_fails": 1}}}}},
		"mirrors": [{"url": [%q], "tenants": ["mirrored"]}]}]`, m.URL()))
	push := func(tenant string) (int, string, string) {
		req := standin.NewPush("http://gateway"+standin.PushPath, standin.RemoteWriteBody(10, 1), tenant)
		resp, body, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header.Get("Retry-After"), string(body)
	}
	push("plain") // refused: the passive health check takes the upstream out
	for _, tenant := range []string{"plain", "mirrored"} {
		if code, ra, body := push(tenant); code != http.StatusServiceUnavailable || ra == "" || body == "" {
			t.Errorf("%s tenant's push: %d, Retry-After %q, body %q; want 503 with the gateway's Retry-After and line", tenant, code, ra, body)
		}
	}
}

// TestHTTPPrimaryAnswersBeforeReadingAll: a primary that answers before it
// has read the whole body (full duplex) still gets all of it, and the
// client all of the answer, whether a mirror takes the tenant (the body
// read whole first) or not (streamed).
func TestHTTPPrimaryAnswersBeforeReadingAll(t *testing.T) {
	t.Parallel()
	const size = 16 << 20
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		_ = rc.EnableFullDuplex()
		head := make([]byte, 64<<10)
		_, _ = io.ReadFull(r.Body, head)
		w.WriteHeader(http.StatusOK) // the answer begins...
		_ = rc.Flush()
		n, err := io.Copy(io.Discard, r.Body) // ...while the body still arrives
		fmt.Fprintf(w, "read %d, %v", int64(len(head))+n, err)
	}))
	t.Cleanup(primary.Close)
	m := startEchoBackend(t, "mirror")
	c := testcaddy.StartJSON(t, func(c *testcaddy.Caddy) string {
		return fmt.Sprintf(`{"admin": {"listen": "unix/%s", "config": {"persist": false}},
		"logging": {"logs": {"default": {"level": "WARN"}}},
		"apps": {"http": {"servers": {"gateway": {"listen": ["unix/%s"], "automatic_https": {"disable": true},
			"enable_full_duplex": true,
			"routes": [{"handle": [{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}},
				"mirrors": [{"url": [%q], "tenants": ["mirrored"]}]}]}]}}}}}`,
			c.AdminSock, c.HTTPSock, primary.URL, m.URL())
	})
	body := strings.Repeat("b", size)
	want := fmt.Sprintf("read %d, <nil>", size)
	for _, tenant := range []string{"plain", "mirrored"} {
		resp, got, err := c.Do(standin.NewPush("http://gateway"+standin.PushPath, []byte(body), tenant))
		if err != nil || resp.StatusCode != http.StatusOK || string(got) != want {
			t.Errorf("tenant %s: %v %v, answer %q; want 200 %q", tenant, resp, err, got, want)
		}
	}
}
