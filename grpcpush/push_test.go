package grpcpush

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/prometheus/client_golang/prometheus"
)

// TestRoundRobinPush is the headline: 4 keep-alive clients (one connection
// each) push 2000-sample bodies through real HTTP into the Handler, which
// spreads them over 3 dskit httpgrpc servers found through a real DNS server.
func TestRoundRobinPush(t *testing.T) {
	t.Parallel()
	const clients, pushes = 4, 150
	c := startCluster(t, 3)
	for _, d := range c.Distributors {
		d.KeepRecords(clients * pushes)
	}
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics()
	reg.MustRegister(m.Collectors()...)
	var doneCalls atomic.Int64
	var unknownEndpoint atomic.Int64
	h := newHandler(t, c, Options{Metrics: m, OnDone: func(_ *http.Request, ep string, status int) {
		doneCalls.Add(1)
		if !strings.HasPrefix(ep, "127.0.0.") || status != http.StatusOK {
			unknownEndpoint.Add(1)
		}
	}})
	waitReady(t, h, 3)
	if got := metricValue(t, m.ready.WithLabelValues(DefaultBackendName)); got != 3 {
		t.Errorf("endpoints_ready = %v, want 3", got)
	}
	fe := frontend(t, h)

	body := standin.RemoteWriteBody(2000, 1)
	wantSum := sha256.Sum256(body)
	var wg sync.WaitGroup
	errs := make(chan error, clients*pushes)
	for i := 0; i < clients; i++ {
		client := oneConnClient(t)
		wg.Go(func() {
			for j := 0; j < pushes; j++ {
				code, _, b, err := post(client, fe.URL, body)
				if err == nil && code != http.StatusOK {
					err = fmt.Errorf("status %d: %s", code, b)
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	total, maxN := 0, 0
	for i, d := range c.Distributors {
		n := int(d.Requests())
		total += n
		maxN = max(maxN, n)
		if d.Samples() != int64(n*2000) {
			t.Errorf("%s: %d samples for %d pushes", d.Name(), d.Samples(), n)
		}
		for _, rec := range d.Records() {
			if rec.BodySHA256 != wantSum || rec.Tenant != testTenant || rec.URL != standin.PushPath ||
				rec.Header.Get("Content-Encoding") != "snappy" {
				t.Fatalf("%s received %+v", d.Name(), rec)
			}
		}
		if got := metricValue(t, m.requests.WithLabelValues(DefaultBackendName, h.Target().String(), c.Addr(i), "200")); got != float64(n) {
			t.Errorf("requests_total{endpoint=%s} = %v, want %d", c.Addr(i), got, n)
		}
	}
	if total != clients*pushes {
		t.Fatalf("servers received %d pushes, want %d", total, clients*pushes)
	}
	if got := c.tenantMD.Load(); got != int64(total) {
		t.Errorf("%d calls carried x-scope-orgid=%s in metadata, want %d", got, testTenant, total)
	}
	mean := float64(total) / 3
	if ratio := float64(maxN) / mean; ratio > 1.05 {
		t.Errorf("max/mean = %.3f > 1.05 (%d, %d, %d)", ratio, c.Distributors[0].Requests(), c.Distributors[1].Requests(), c.Distributors[2].Requests())
	}
	if doneCalls.Load() != int64(total) || unknownEndpoint.Load() != 0 {
		t.Errorf("OnDone: %d calls, %d without endpoint or 200", doneCalls.Load(), unknownEndpoint.Load())
	}
	var sum uint64
	for _, e := range h.Endpoints() {
		sum += e.Requests
	}
	if sum != uint64(total) {
		t.Errorf("Endpoints() counts %d calls, want %d", sum, total)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(families) != 7 {
		t.Errorf("gathered %d metric families, want 7", len(families))
	}
	if got := metricValue(t, m.inFlight.WithLabelValues(DefaultBackendName)); got != 0 {
		t.Errorf("in flight = %v after the load", got)
	}
	// gRPC may let go of a body buffer just after its request is answered.
	standin.WaitFor(t, 10*time.Second, "every body buffer given back", func() bool {
		return metricValue(t, m.buffered.WithLabelValues(DefaultBackendName)) == 0
	})
}

// TestRemoteWrite2RoundTrip checks that RW2 request headers reach the
// distributor and its -Written response headers reach the client.
func TestRemoteWrite2RoundTrip(t *testing.T) {
	c := startCluster(t, 1)
	c.Distributors[0].KeepRecords(1)
	h := newHandler(t, c, Options{})
	r := pushRequest(standin.RemoteWriteV2Body(500, 4))
	r.Header.Set("Content-Type", standin.ContentTypeRW2)
	r.Header.Set("X-Prometheus-Remote-Write-Version", "2.0.0")
	w := serve(h, r)
	if w.Code != http.StatusNoContent {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	for k, want := range map[string]string{
		standin.HeaderSamplesWritten: "2000", standin.HeaderHistogramsWritten: "0", standin.HeaderExemplarsWritten: "0",
	} {
		if got := w.Header().Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	rec := c.Distributors[0].Records()[0]
	if rec.Header.Get("Content-Type") != standin.ContentTypeRW2 || rec.Header.Get("X-Prometheus-Remote-Write-Version") != "2.0.0" {
		t.Errorf("distributor saw headers %v", rec.Header)
	}
}

// TestNoTenantAndBodyLimit: both are answered locally, without any call.
func TestNoTenantAndBodyLimit(t *testing.T) {
	c := startCluster(t, 1)
	h := newHandler(t, c, Options{MaxRequestBody: 1000})
	waitReady(t, h, 1)

	r := pushRequest(make([]byte, 10))
	r.Header.Del("X-Scope-OrgID")
	if w := serve(h, r); w.Code != http.StatusUnauthorized || w.Body.String() != "no org id\n" {
		t.Errorf("no tenant: %d %q", w.Code, w.Body)
	}
	w := serve(h, pushRequest(make([]byte, 1001)))
	if w.Code != http.StatusRequestEntityTooLarge || !strings.Contains(w.Body.String(), "larger than 1000 bytes") {
		t.Errorf("over the limit: %d %q", w.Code, w.Body)
	}
	chunked := pushRequest(nil)
	chunked.Body = io.NopCloser(bytes.NewReader(make([]byte, 5000)))
	chunked.ContentLength = -1
	if w := serve(h, chunked); w.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked over the limit: %d %q", w.Code, w.Body)
	}
	if n := c.Servers[0].Calls(); n != 0 {
		t.Fatalf("%d calls reached the server", n)
	}
	// At the limit the body goes through (and, not being snappy, is refused
	// by the distributor: proving it arrived).
	if w := serve(h, pushRequest(make([]byte, 1000))); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "snappy") {
		t.Errorf("at the limit: %d %q", w.Code, w.Body)
	}
	chunked = pushRequest(nil)
	chunked.Body = io.NopCloser(bytes.NewReader(standin.RemoteWriteBody(5, 1)))
	chunked.ContentLength = -1
	if w := serve(h, chunked); w.Code != http.StatusOK {
		t.Errorf("chunked push: %d %q", w.Code, w.Body)
	}
}

// TestTunnelledRequest checks URL, query, method, multi-tenant value, Host and
// the hop-by-hop headers of the tunnelled request.
func TestTunnelledRequest(t *testing.T) {
	c := startCluster(t, 1)
	c.Distributors[0].KeepRecords(1)
	c.Distributors[0].SetBehavior(func(w http.ResponseWriter, _ *http.Request) bool {
		w.Header().Set("X-Answer", "42")
		w.Header().Set("Keep-Alive", "timeout=1")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, "accepted")
		return true
	})
	h := newHandler(t, c, Options{})
	r := pushRequest([]byte("payload"))
	r.Method = http.MethodPut
	r.RequestURI = "/distributor/ha_tracker?tenant=a%7Cb&x=1"
	r.Host = "gateway.example:8080"
	r.Header.Set("X-Scope-OrgID", "team-a|team-b")
	r.Header.Set("Connection", "X-Drop-Me, keep-alive")
	r.Header.Set("X-Drop-Me", "1")
	for _, k := range []string{"Keep-Alive", "Te", "Upgrade", "Proxy-Authorization", "Trailer"} {
		r.Header.Set(k, "x")
	}
	r.Header["X-Multi"] = []string{"1", "2"}
	w := serve(h, r)
	if w.Code != http.StatusAccepted || w.Body.String() != "accepted" || w.Header().Get("X-Answer") != "42" || w.Header().Get("Keep-Alive") != "" {
		t.Fatalf("answer %d %q %v", w.Code, w.Body, w.Header())
	}
	rec := c.Distributors[0].Records()[0]
	if rec.Method != http.MethodPut || rec.URL != "/distributor/ha_tracker?tenant=a%7Cb&x=1" || rec.Tenant != "team-a|team-b" {
		t.Errorf("got %s %s tenant %q", rec.Method, rec.URL, rec.Tenant)
	}
	if rec.Header.Get("Host") != "gateway.example:8080" || len(rec.Header["X-Multi"]) != 2 || rec.BodySHA256 != sha256.Sum256([]byte("payload")) {
		t.Errorf("headers %v", rec.Header)
	}
	for _, k := range []string{"Connection", "X-Drop-Me", "Keep-Alive", "Te", "Upgrade", "Proxy-Authorization", "Trailer"} {
		if _, ok := rec.Header[k]; ok {
			t.Errorf("hop-by-hop header %s was tunnelled", k)
		}
	}
}

// TestOverlappingHandlersShareMetrics runs two Handlers of one backend, as
// during a reload that changed its settings, then closes the first: the
// ready gauge and the endpoints' request series are the second's.
func TestOverlappingHandlersShareMetrics(t *testing.T) {
	c := startCluster(t, 3)
	m := NewMetrics()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collectors()...)
	first := newHandler(t, c, Options{Metrics: m})
	second := newHandler(t, c, Options{Metrics: m, Timeout: 20 * time.Second})
	waitReady(t, first, 3)
	waitReady(t, second, 3)
	for _, h := range []*Handler{first, second} {
		if w := serve(h, pushRequest(standin.RemoteWriteBody(10, 1))); w.Code != 200 {
			t.Fatalf("push: %d %s", w.Code, w.Body)
		}
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	ready := m.ready.WithLabelValues(DefaultBackendName)
	if got := metricValue(t, ready); got != 3 {
		t.Errorf("endpoints_ready = %v after the first Handler closed, want the second's 3", got)
	}
	if eps := first.Endpoints(); len(eps) != 0 {
		t.Errorf("closed Handler still lists endpoints: %v", eps)
	}
	for i := 0; i < 3; i++ {
		if w := serve(second, pushRequest(standin.RemoteWriteBody(10, 1))); w.Code != 200 {
			t.Fatalf("push: %d %s", w.Code, w.Body)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var series int
	for _, f := range families {
		if f.GetName() == "metrics_gateway_grpc_requests_total" {
			series = len(f.GetMetric())
		}
	}
	if series < 3 {
		t.Errorf("%d request series after the first Handler closed, want one per endpoint of the second", series)
	}
}

// TestOverlappingHandlersHealthSeries runs an older Handler whose passive
// health check takes every endpoint out (each call is "too slow") beside a
// newer one without health checks, as during a reload that turned them
// off: endpoint_healthy is the newer Handler's view, not the draining one's.
func TestOverlappingHandlersHealthSeries(t *testing.T) {
	c := startCluster(t, 2)
	m := NewMetrics()
	older := newHandler(t, c, Options{Metrics: m, FailDuration: time.Minute, UnhealthyLatency: time.Nanosecond})
	waitReady(t, older, 2)
	newer := newHandler(t, c, Options{Metrics: m})
	waitReady(t, newer, 2)
	for i := 0; i < 4; i++ {
		if w := serve(older, pushRequest(standin.RemoteWriteBody(10, 1))); w.Code != 200 {
			t.Fatalf("push: %d %s", w.Code, w.Body)
		}
	}
	var out int
	for _, ep := range older.Endpoints() {
		if !ep.Healthy {
			out++
		}
	}
	if out == 0 {
		t.Fatalf("the older Handler's health check took no endpoint out: %+v", older.Endpoints())
	}
	for _, ep := range newer.Endpoints() {
		if got := metricValue(t, m.healthy.WithLabelValues(DefaultBackendName, ep.Address)); got != 1 {
			t.Errorf("endpoint_healthy{endpoint=%q} = %v, want the newer Handler's 1", ep.Address, got)
		}
	}
}
