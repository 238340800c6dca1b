package grpcpush

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grafana/dskit/httpgrpc"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	zapobserver "go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestKillEndpointUnderLoad hard-stops one of three servers while 4 clients
// push unique bodies: every acknowledged body must have reached a server,
// failures stay <= 0.1 %, and the other two take over.
func TestKillEndpointUnderLoad(t *testing.T) {
	t.Parallel()
	const clients, pushes = 4, 150
	c := startCluster(t, 3)
	for _, d := range c.Distributors {
		d.KeepRecords(clients * pushes * 2)
	}
	h := newHandler(t, c, Options{})
	waitReady(t, h, 3)
	fe := frontend(t, h)

	bodies := make([][]byte, clients*pushes)
	for i := range bodies {
		bodies[i] = standin.RemoteWriteBodyAt(200, 10, int64(i)*1_000_000)
	}
	var sent atomic.Int64
	killAt := int64(len(bodies) / 3)
	killed := make(chan struct{})
	var killedAtCount [3]int64
	go func() {
		defer close(killed)
		for sent.Load() < killAt {
			runtime.Gosched()
			time.Sleep(time.Millisecond)
		}
		for i, d := range c.Distributors {
			killedAtCount[i] = d.Requests()
		}
		c.Servers[0].Stop()
	}()

	var mu sync.Mutex
	var acked [][32]byte
	var failures []string
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		client := oneConnClient(t)
		wg.Go(func() {
			for j := 0; j < pushes; j++ {
				body := bodies[i*pushes+j]
				code, _, b, err := post(client, fe.URL, body)
				sent.Add(1)
				mu.Lock()
				if err == nil && code == http.StatusOK {
					acked = append(acked, sha256.Sum256(body))
				} else {
					failures = append(failures, fmt.Sprintf("%d %s %v", code, b, err))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	<-killed

	received := map[[32]byte]bool{}
	for _, d := range c.Distributors {
		for _, r := range d.Records() {
			received[r.BodySHA256] = true
		}
	}
	for _, sum := range acked {
		if !received[sum] {
			t.Fatalf("an acknowledged body never reached a distributor")
		}
	}
	if float64(len(failures)) > 0.001*float64(len(bodies)) {
		t.Errorf("%d of %d pushes failed: %v", len(failures), len(bodies), failures)
	}
	after := [3]int64{}
	for i, d := range c.Distributors {
		after[i] = d.Requests() - killedAtCount[i]
	}
	// Everything sent after the kill went to the survivors, about evenly.
	if after[0] > clients || after[1] == 0 || after[2] == 0 {
		t.Errorf("requests after the kill: %v", after)
	}
	standin.WaitFor(t, 20*time.Second, "killed endpoint to leave READY", func() bool {
		for _, e := range h.Endpoints() {
			if e.Address == c.Addr(0) && e.State == "READY" {
				return false
			}
		}
		return true
	})
	t.Logf("failures %d of %d, requests after the kill %v, endpoints %+v", len(failures), len(bodies), after, h.Endpoints())
}

// TestDNSChanges: a new record gets traffic within refresh + 1s, a removed
// one none after the next refresh, and requests keep succeeding while the
// DNS server is down.
func TestDNSChanges(t *testing.T) {
	t.Parallel()
	const refresh = 200 * time.Millisecond
	c := startCluster(t, 3)
	c.ListOnly(0, 1)
	core, logs := zapobserver.New(zapcore.InfoLevel)
	m := NewMetrics()
	h := newHandler(t, c, Options{Refresh: refresh, Logger: zap.New(core), Metrics: m})
	waitReady(t, h, 2)
	body := standin.RemoteWriteBody(100, 1)
	push := func() {
		t.Helper()
		if w := serve(h, pushRequest(body)); w.Code != http.StatusOK {
			t.Fatalf("push: %d %s", w.Code, w.Body)
		}
	}

	// A new record gets traffic within refresh + 1s.
	c.ListOnly(0, 1, 2)
	start := time.Now()
	for c.Distributors[2].Requests() == 0 {
		if time.Since(start) > 20*time.Second {
			t.Fatal("new endpoint never got traffic")
		}
		push()
	}
	if took := time.Since(start); took > refresh+time.Second {
		t.Errorf("new endpoint got its first request after %v (> refresh + 1s)", took)
	}

	// A removed record: gone from the set after the next refresh, then no
	// new requests.
	c.ListOnly(0, 2)
	start = time.Now()
	standin.WaitFor(t, 20*time.Second, "removed endpoint to leave the set", func() bool {
		push()
		return !slices.ContainsFunc(h.Endpoints(), func(e EndpointStatus) bool { return e.Address == c.Addr(1) })
	})
	if took := time.Since(start); took > refresh+time.Second {
		t.Errorf("removed endpoint left the set after %v (> refresh + 1s)", took)
	}
	before := c.Distributors[1].Requests()
	for i := 0; i < 60; i++ {
		push()
	}
	if got := c.Distributors[1].Requests(); got != before {
		t.Errorf("removed endpoint got %d more requests", got-before)
	}
	if n := seriesFor(t, m, c.Addr(1)); n != 0 {
		t.Errorf("%d request series left for the removed endpoint", n)
	}
	if n := seriesFor(t, m, c.Addr(2)); n != 1 {
		t.Errorf("%d request series for a live endpoint", n)
	}
	changes := logs.FilterMessage("endpoints changed").AllUntimed()
	if len(changes) != 3 {
		t.Fatalf("%d endpoint-set changes logged, want 3: %v", len(changes), changes)
	}
	if f := changes[1].ContextMap(); fmt.Sprint(f["added"]) != "["+c.Addr(2)+"]" || fmt.Sprint(f["removed"]) != "[]" {
		t.Errorf("second change logged as %v", f)
	}
	if f := changes[2].ContextMap(); fmt.Sprint(f["removed"]) != "["+c.Addr(1)+"]" {
		t.Errorf("third change logged as %v", f)
	}

	// DNS down: the last good endpoints stay and keep working.
	queries := c.DNS.Queries()
	if err := c.DNS.Stop(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * refresh)
	for time.Now().Before(deadline) {
		push()
	}
	if got := len(h.Endpoints()); got != 2 {
		t.Errorf("%d endpoints with DNS down, want 2", got)
	}
	if c.Distributors[0].Requests() == 0 || c.Distributors[2].Requests() == 0 {
		t.Error("an endpoint got no traffic")
	}
	standin.WaitFor(t, 20*time.Second, "a warning about the failed resolution", func() bool {
		return logs.FilterMessage("DNS resolution failed, keeping the last endpoints").Len() > 0
	})
	t.Logf("%d DNS queries before the DNS server stopped", queries)
}

// TestFixedIPTarget: dns:///ip:port is one endpoint, no DNS.
func TestFixedIPTarget(t *testing.T) {
	c := startCluster(t, 2)
	h := newHandler(t, c, Options{Target: "dns:///" + c.Addr(1), Retries: Ptr(0)})
	for i := 0; i < 5; i++ {
		if w := serve(h, pushRequest(standin.RemoteWriteBody(10, 1))); w.Code != http.StatusOK {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
	}
	if c.Distributors[1].Requests() != 5 || c.Distributors[0].Requests() != 0 || c.DNS.Queries() != 0 {
		t.Fatalf("requests %d/%d, DNS queries %d", c.Distributors[0].Requests(), c.Distributors[1].Requests(), c.DNS.Queries())
	}
}

// TestHungEndpoint: an endpoint that never answers gives 504 at the timeout,
// and the goroutines of those calls (client and server side) go away.
func TestHungEndpoint(t *testing.T) {
	const timeout = 300 * time.Millisecond
	c := startCluster(t, 1)
	h := newHandler(t, c, Options{Timeout: timeout})
	waitReady(t, h, 1)
	if w := serve(h, pushRequest(standin.RemoteWriteBody(10, 1))); w.Code != http.StatusOK {
		t.Fatalf("warm-up: %d", w.Code)
	}
	baseline := standin.NumGoroutines()
	// The endpoint hangs until released: waiting for its own context would
	// not do, as the server's context expires with the call's deadline
	// (grpc-timeout) and the stand-in could answer just before the client
	// gives up.
	var hung atomic.Int64
	release := make(chan struct{})
	c.Distributors[0].SetBehavior(standin.HangUntil(release, &hung))
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	const n = 20
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Go(func() {
			start := time.Now()
			w := serve(h, pushRequest(standin.RemoteWriteBody(10, 1)))
			took := time.Since(start)
			if w.Code != http.StatusGatewayTimeout || took < timeout || took > timeout+5*time.Second {
				t.Errorf("got %d %q after %v", w.Code, w.Body, took)
			}
		})
	}
	wg.Wait()
	if hung.Load() != n {
		t.Errorf("%d calls reached the server, want %d", hung.Load(), n)
	}
	close(release)
	standin.WaitGoroutines(t, baseline, 2)
}

// TestClientDisconnect: a client that goes away cancels the call; the
// server sees the cancellation and nothing is answered (499 recorded).
func TestClientDisconnect(t *testing.T) {
	c := startCluster(t, 1)
	arrived, canceled := make(chan struct{}), make(chan struct{})
	c.Distributors[0].SetBehavior(func(_ http.ResponseWriter, r *http.Request) bool {
		close(arrived)
		<-r.Context().Done()
		close(canceled)
		return true
	})
	status := make(chan int, 1)
	h := newHandler(t, c, Options{OnDone: func(_ *http.Request, _ string, code int) { status <- code }})
	fe := frontend(t, h)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fe.URL+standin.PushPath, nil)
	req.Header.Set("X-Scope-OrgID", testTenant)
	errc := make(chan error, 1)
	go func() {
		resp, err := oneConnClient(t).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	waitChan(t, arrived, "the call to reach the server")
	cancel()
	waitChan(t, canceled, "the server to see the cancellation")
	if err := <-errc; err == nil {
		t.Error("client got an answer")
	}
	select {
	case code := <-status:
		if code != StatusClientClosedRequest {
			t.Errorf("recorded status %d, want 499", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("OnDone not called")
	}
}

func waitChan(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestRetryLargeBody: a 1 MiB call failing with UNAVAILABLE on one endpoint
// is retried on the other. grpc-go would not retry it with its default
// 256 KiB retry buffer.
func TestRetryLargeBody(t *testing.T) {
	var refused atomic.Int64
	refuseOn := standin.GroupIP(0)
	c := startCluster(t, 2, standin.WithUnaryInterceptors(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		if r := req.(*httpgrpc.HTTPRequest); r.Url == "/refuse" {
			if localIP(ctx) == refuseOn {
				refused.Add(1)
				return nil, status.Error(codes.Unavailable, "shutting down")
			}
		}
		return next(ctx, req)
	}))
	c.Distributors[1].SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		w.WriteHeader(http.StatusOK)
		return true
	})
	h := newHandler(t, c, Options{})
	waitReady(t, h, 2)
	body := make([]byte, 1<<20)
	for i := 0; i < 10; i++ {
		r := pushRequest(body)
		r.RequestURI = "/refuse"
		if w := serve(h, r); w.Code != http.StatusOK {
			t.Fatalf("push %d: %d %s", i, w.Code, w.Body)
		}
	}
	if refused.Load() == 0 {
		t.Fatal("no call was refused: the test proves nothing")
	}
}

// seriesFor counts the requests_total series of an endpoint.
func seriesFor(t *testing.T, m *Metrics, addr string) int {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collectors()...)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range families {
		if f.GetName() != "metrics_gateway_grpc_requests_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "endpoint" && l.GetValue() == addr {
					n++
				}
			}
		}
	}
	return n
}

// TestCloseReleasesEverything: after Close, the Handler's goroutines
// (resolver, connections) are gone.
func TestCloseReleasesEverything(t *testing.T) {
	c := startCluster(t, 3)
	baseline := standin.NumGoroutines()
	h, err := New(Options{Target: c.Target(), Refresh: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, h, 3)
	for i := 0; i < 10; i++ {
		if w := serve(h, pushRequest(standin.RemoteWriteBody(10, 1))); w.Code != http.StatusOK {
			t.Fatalf("%d", w.Code)
		}
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	standin.WaitGoroutines(t, baseline, 0)
	if w := serve(h, pushRequest([]byte("x"))); w.Code != http.StatusServiceUnavailable {
		t.Errorf("closed Handler answered %d %q", w.Code, w.Body)
	}
}
