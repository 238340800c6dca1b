package caddymodule_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/metrics-gateway/metrics_gateway/caddymodule"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// distributorName is the DNS name the test DNS server answers with the
// stand-ins' addresses, like a headless Service.
const distributorName = "distributor-headless.mimir.test"

// cluster is n distributor stand-ins behind dskit's real httpgrpc server on
// 127.0.0.2, .3, ... (one port) and a real DNS server listing them, with
// counters of what the servers saw.
type cluster struct {
	*standin.Cluster
	tenantMD atomic.Int64 // calls whose metadata had exactly one tenant, "tenant-1"
	conns    atomic.Int64 // open gRPC connections, all servers
	raw      atomic.Pointer[func(ctx context.Context) error]
}

func startCluster(t *testing.T, n int) *cluster {
	t.Helper()
	c := &cluster{}
	var err error
	c.Cluster, err = standin.StartCluster(distributorName, n,
		standin.WithUnaryInterceptors(c.intercept),
		standin.WithServerOptions(grpc.StatsHandler(connCounter{&c.conns})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

// intercept records the tenant metadata and, when a test installed one,
// answers with a raw gRPC error instead of calling the distributor.
func (c *cluster) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("x-scope-orgid"); len(v) == 1 && v[0] == "tenant-1" {
			c.tenantMD.Add(1)
		}
	}
	if f := c.raw.Load(); f != nil {
		if err := (*f)(ctx); err != nil {
			return nil, err
		}
	}
	return next(ctx, req)
}

// handlerJSON is a gateway whose distributor is the cluster.
func (c *cluster) handlerJSON(grpcOpts string) string {
	return fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {
		"default": {"url": "http://127.0.0.1:1"},
		"distributor": {"url": %q, "grpc": {%s}}}}]`, c.Target(), grpcOpts)
}

// connCounter counts a gRPC server's open connections.
type connCounter struct{ n *atomic.Int64 }

func (connCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (connCounter) HandleRPC(context.Context, stats.RPCStats)                         {}
func (connCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (c connCounter) HandleConn(_ context.Context, s stats.ConnStats) {
	switch s.(type) {
	case *stats.ConnBegin:
		c.n.Add(1)
	case *stats.ConnEnd:
		c.n.Add(-1)
	}
}

// newPush is a Remote-Write 1.0 push of body to the gateway: the body's
// Content-Type and Content-Encoding, then cr's headers.
func newPush(body []byte, cr cred) *http.Request {
	req := standin.NewPush("http://gateway"+standin.PushPath, body, "")
	cr(req.Header)
	return req
}

// asTenant is what a Remote-Write client sends with a push as tenant
// (standin.SetPushHeaders).
func asTenant(tenant string) cred {
	return func(h http.Header) { standin.SetPushHeaders(h, tenant) }
}

// pushWith sends newPush(body, cr) with client and reads the whole answer.
func pushWith(client *http.Client, body []byte, cr cred) (*http.Response, []byte, error) {
	return do(client, newPush(body, cr))
}

// push sends a Remote-Write 1.0 body through the gateway as tenant-1.
func push(client *http.Client, body []byte) (*http.Response, []byte, error) {
	return pushWith(client, body, asTenant("tenant-1"))
}

// pushRetrying is push with a remote-write client's retries of network
// errors, for requests around a reload: Go's HTTP/1 server closes, unread
// and unanswered, a request that arrives on a connection in the instant the
// old server stops (see TestReloadSwitchesBackends). retried counts them.
func pushRetrying(client *http.Client, body []byte, retried *atomic.Int64) (*http.Response, []byte, error) {
	return pushWithRetrying(client, body, asTenant("tenant-1"), retried)
}

// pushWithRetrying is pushWith with pushRetrying's retries.
func pushWithRetrying(client *http.Client, body []byte, cr cred, retried *atomic.Int64) (*http.Response, []byte, error) {
	resp, b, err := pushWith(client, body, cr)
	for try := 0; err != nil && try < 5; try++ {
		if retried != nil {
			retried.Add(1)
		}
		resp, b, err = pushWith(client, body, cr)
	}
	return resp, b, err
}

// oneConnClient is a keep-alive client holding one connection to the
// gateway, like a Prometheus remote-write queue shard.
func oneConnClient(t *testing.T, c *testcaddy.Caddy) *http.Client {
	tr := testcaddy.UnixTransport(c.HTTPSock)
	tr.MaxConnsPerHost, tr.MaxIdleConnsPerHost = 1, 1
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// fromClients runs clients remote-write shards at once, each with a
// one-connection client of its own making pushes calls do(client, j), and
// returns the errors they returned.
func fromClients(t *testing.T, c *testcaddy.Caddy, clients, pushes int, do func(client *http.Client, j int) error) []error {
	var wg sync.WaitGroup
	errs := make(chan error, clients*pushes)
	for i := 0; i < clients; i++ {
		client := oneConnClient(t, c)
		wg.Go(func() {
			for j := 0; j < pushes; j++ {
				if err := do(client, j); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	var out []error
	for err := range errs {
		out = append(out, err)
	}
	return out
}

// firstRetryAfter reports whether v is the gateway's Retry-After for a
// first attempt with the default retry_after: 6s ±50 %, at least 6.
func firstRetryAfter(v string) bool {
	n, err := strconv.Atoi(v)
	return err == nil && n >= 6 && n <= 9
}

func maxOverMean(counts []int64) float64 {
	var sum, max int64
	for _, n := range counts {
		sum += n
		if n > max {
			max = n
		}
	}
	if sum == 0 {
		return 0
	}
	return float64(max) / (float64(sum) / float64(len(counts)))
}

// TestGRPCPushBalanced is the reason the gateway exists: 4 clients, each on
// one keep-alive connection, push 500 Remote-Write bodies of 2000 samples
// each; every request goes round-robin to the next distributor.
func TestGRPCPushBalanced(t *testing.T) {
	t.Parallel()
	const clients, pushes = 4, 500
	cl := startCluster(t, 3)
	for _, d := range cl.Distributors {
		d.KeepRecords(clients * pushes)
	}
	c := testcaddy.Start(t, cl.handlerJSON(""))
	body := standin.RemoteWriteBody(2000, 1)
	sum := sha256.Sum256(body)

	// Let all three connections come up first, as they would in a running
	// gateway, so the balance measures round-robin and not connection setup.
	standin.WaitFor(t, 20*time.Second, "3 gRPC connections", func() bool {
		_, _, _ = push(c.Client, body)
		return cl.conns.Load() == 3
	})
	for _, d := range cl.Distributors {
		d.Reset()
	}
	cl.tenantMD.Store(0)

	errs := fromClients(t, c, clients, pushes, func(client *http.Client, _ int) error {
		resp, b, err := push(client, body)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("%s: %s", resp.Status, b)
		}
		return err
	})
	for _, err := range errs {
		t.Fatalf("push failed: %v", err)
	}

	counts := cl.Requests()
	var total int64
	for i, d := range cl.Distributors {
		total += counts[i]
		for _, r := range d.Records() {
			if r.BodySHA256 != sum || r.Tenant != "tenant-1" || r.URL != "/api/v1/push" ||
				r.Header.Get("Content-Encoding") != "snappy" {
				t.Fatalf("request arrived changed: %+v", r)
			}
		}
		if d.Samples() != counts[i]*2000 {
			t.Errorf("%s: %d samples for %d requests", d.Name(), d.Samples(), counts[i])
		}
	}
	if total != clients*pushes {
		t.Errorf("distributors got %d requests, want %d", total, clients*pushes)
	}
	if got := cl.tenantMD.Load(); got != clients*pushes {
		t.Errorf("%d calls carried x-scope-orgid metadata, want %d", got, clients*pushes)
	}
	if r := maxOverMean(counts); r > 1.05 {
		t.Errorf("per-distributor requests %v: max/mean %.3f > 1.05", counts, r)
	}
	t.Logf("per-distributor requests %v, max/mean %.3f", counts, maxOverMean(counts))
}

// TestGRPCErrorContract checks, through Caddy, what a remote-write client
// gets for each kind of distributor answer.
func TestGRPCErrorContract(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	c := testcaddy.Start(t, cl.handlerJSON(`"retries": 0`))
	body := standin.RemoteWriteBody(10, 1)

	answer := func(code int, header map[string]string, text string) standin.Behavior {
		return func(w http.ResponseWriter, _ *http.Request) bool {
			for k, v := range header {
				w.Header().Set(k, v)
			}
			w.WriteHeader(code)
			io.WriteString(w, text)
			return true
		}
	}
	raw := func(err error) func(context.Context) error {
		return func(context.Context) error { return err }
	}
	cases := []struct {
		name       string
		behavior   standin.Behavior
		raw        func(context.Context) error
		wantCode   int
		wantHeader map[string]string
		wantBody   string
	}{
		{name: "ok", wantCode: 200},
		{name: "bad data", behavior: answer(400, nil, "invalid metric name"), wantCode: 400, wantBody: "invalid metric name"},
		{name: "rate limited", behavior: answer(429, map[string]string{"Retry-After": "7"}, "ingestion rate limit"), wantCode: 429, wantHeader: map[string]string{"Retry-After": "7"}, wantBody: "ingestion rate limit"},
		{name: "ha dedupe", behavior: answer(202, nil, "replicas did not match"), wantCode: 202},
		{name: "internal", behavior: answer(500, nil, "boom"), wantCode: 500, wantBody: "boom"},
		{name: "unavailable", behavior: answer(503, nil, "ingesters down"), wantCode: 503, wantBody: "ingesters down"},
		{name: "mimir push canceled (499)", behavior: answer(499, nil, "context canceled"), wantCode: 503, wantHeader: map[string]string{"Retry-After": ""}, wantBody: "canceled the request (499)"},
		{name: "cortex 5xx without detail", raw: raw(status.Error(codes.Code(502), "bad gateway")), wantCode: 502},
		{name: "mimir ErrorDetails ingestion rate", raw: raw(standin.ErrorDetailsStatus(codes.ResourceExhausted, standin.CauseIngestionRateLimited, "rate")), wantCode: 429},
		{name: "mimir ErrorDetails bad data", raw: raw(standin.ErrorDetailsStatus(codes.InvalidArgument, standin.CauseBadData, "bad")), wantCode: 400},
		{name: "mimir ErrorDetails tsdb unavailable", raw: raw(standin.ErrorDetailsStatus(codes.Internal, standin.CauseTSDBUnavailable, "tsdb")), wantCode: 503},
		{name: "grpc unavailable", raw: raw(status.Error(codes.Unavailable, "going away")), wantCode: 503, wantHeader: map[string]string{"Retry-After": ""}},
		{name: "grpc canceled on the way", raw: raw(status.Error(codes.Canceled, "stream reset by a sidecar")), wantCode: 503, wantHeader: map[string]string{"Retry-After": ""}, wantBody: "canceled on the way"},
		{name: "grpc deadline", raw: raw(status.Error(codes.DeadlineExceeded, "slow")), wantCode: 504},
		{name: "grpc message too large", raw: raw(status.Error(codes.ResourceExhausted, "grpc: received message larger than max (5 vs. 4)")), wantCode: 413},
		{name: "grpc resource exhausted", raw: raw(status.Error(codes.ResourceExhausted, "too many")), wantCode: 429},
		{name: "grpc invalid argument", raw: raw(status.Error(codes.InvalidArgument, "nope")), wantCode: 400},
		{name: "grpc permission denied", raw: raw(status.Error(codes.PermissionDenied, "nope")), wantCode: 403},
		{name: "grpc unimplemented", raw: raw(status.Error(codes.Unimplemented, "nope")), wantCode: 501},
		{name: "grpc other", raw: raw(status.Error(codes.DataLoss, "nope")), wantCode: 500},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cl.Distributors[0].SetBehavior(tc.behavior)
			defer cl.Distributors[0].SetBehavior(nil)
			if tc.raw != nil {
				cl.raw.Store(&tc.raw)
				defer cl.raw.Store(nil)
			}
			resp, b, err := push(c.Client, body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantCode {
				t.Errorf("status %d (%q), want %d", resp.StatusCode, b, tc.wantCode)
			}
			for k, v := range tc.wantHeader {
				got := resp.Header.Get(k)
				if (v == "" && got == "") || (v != "" && got != v) {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if tc.wantBody != "" && !strings.Contains(string(b), tc.wantBody) {
				t.Errorf("body %q, want it to contain %q", b, tc.wantBody)
			}
		})
	}

	t.Run("no tenant", func(t *testing.T) {
		before := cl.Servers[0].Calls()
		req, _ := http.NewRequest(http.MethodPost, "http://gateway/api/v1/push", bytes.NewReader(body))
		resp, b, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 401 || !strings.Contains(string(b), "no org id") || cl.Servers[0].Calls() != before {
			t.Errorf("%s %q, %d calls: want 401 no org id without a call", resp.Status, b, cl.Servers[0].Calls()-before)
		}
	})
}

// TestGRPCRemoteWrite2AndBodyLimit checks Remote-Write 2.0's headers both
// ways and the body limit.
func TestGRPCRemoteWrite2AndBodyLimit(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	cl.Distributors[0].KeepRecords(10)
	c := testcaddy.Start(t, cl.handlerJSON(`"max_request_body": 65536`))

	req, _ := http.NewRequest(http.MethodPost, "http://gateway/api/v1/push", bytes.NewReader(standin.RemoteWriteV2Body(100, 1)))
	req.Header.Set("Content-Type", standin.ContentTypeRW2)
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("X-Prometheus-Remote-Write-Version", "2.0.0")
	req.Header.Set("X-Scope-OrgID", "tenant-1")
	resp, b, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode/100 != 2 || resp.Header.Get(standin.HeaderSamplesWritten) != "100" {
		t.Errorf("RW2: %s %q, samples written %q", resp.Status, b, resp.Header.Get(standin.HeaderSamplesWritten))
	}
	recs := cl.Distributors[0].Records()
	if len(recs) != 1 || recs[0].Header.Get("Content-Type") != standin.ContentTypeRW2 ||
		recs[0].Header.Get("X-Prometheus-Remote-Write-Version") != "2.0.0" {
		t.Errorf("RW2 request headers did not arrive: %+v", recs)
	}

	before := cl.Servers[0].Calls()
	resp, b, err = push(c.Client, make([]byte, 65537))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 413 || cl.Servers[0].Calls() != before {
		t.Errorf("body over the limit: %s %q and %d calls, want 413 and none", resp.Status, b, cl.Servers[0].Calls()-before)
	}
}

// TestGRPCEndpointDiesUnderLoad kills one of three distributors while
// clients push: no acknowledged push is lost, almost none fail, and the
// others take over.
func TestGRPCEndpointDiesUnderLoad(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 3)
	c := testcaddy.Start(t, cl.handlerJSON(`"refresh": "200ms"`))
	// Small bodies: the point is the kill, not the decoding, and a busy
	// machine must still get through the pushes in time.
	body := standin.RemoteWriteBody(200, 1)
	standin.WaitFor(t, 20*time.Second, "3 connections", func() bool { _, _, _ = push(c.Client, body); return cl.conns.Load() == 3 })
	for _, d := range cl.Distributors {
		d.Reset()
	}

	var acked, failed atomic.Int64
	clients := []*http.Client{oneConnClient(t, c), oneConnClient(t, c), oneConnClient(t, c), oneConnClient(t, c)}
	stop := runLoad(t, len(clients), func(w int) {
		resp, _, err := push(clients[w], body)
		if err == nil && resp.StatusCode == 200 {
			acked.Add(1)
		} else {
			failed.Add(1)
		}
	})
	standin.WaitFor(t, time.Minute, "traffic before the kill", func() bool { return acked.Load() >= 300 })
	cl.Servers[2].Stop()
	afterKill := acked.Load()
	standin.WaitFor(t, time.Minute, "traffic after the kill", func() bool { return acked.Load() >= afterKill+600 })
	stop()

	var received int64
	for _, d := range cl.Distributors {
		received += d.Requests()
	}
	if received < acked.Load() {
		t.Errorf("%d pushes acknowledged but only %d reached a distributor", acked.Load(), received)
	}
	total := acked.Load() + failed.Load()
	if float64(failed.Load()) > 0.001*float64(total) {
		t.Errorf("%d of %d pushes failed (> 0.1%%)", failed.Load(), total)
	}
	counts := cl.Requests()
	if counts[0] == 0 || counts[1] == 0 {
		t.Errorf("survivors did not take over: %v", counts)
	}
	t.Logf("%d acknowledged, %d failed, per distributor %v", acked.Load(), failed.Load(), counts)
}

// TestGRPCDiscovery checks that a new A record gets traffic within
// refresh + 1 s, and that the gateway keeps serving when DNS goes away.
func TestGRPCDiscovery(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 3)
	cl.List(2)
	c := testcaddy.Start(t, cl.handlerJSON(`"refresh": "300ms"`))
	body := standin.RemoteWriteBody(100, 1)
	if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %v %q", err, b)
	}

	cl.List(3)
	added := time.Now()
	standin.WaitFor(t, 20*time.Second, "the new distributor to get traffic", func() bool {
		_, _, _ = push(c.Client, body)
		return cl.Distributors[2].Requests() > 0
	})
	if took := time.Since(added); took > 300*time.Millisecond+time.Second {
		t.Errorf("new endpoint got traffic after %v, want within refresh + 1s", took)
	}

	_ = cl.DNS.Stop()
	for i := 0; i < 30; i++ {
		if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
			t.Fatalf("push with DNS down: %v %q", err, b)
		}
	}
}

// TestGRPCReloadsKeepConnections reloads the config 20 times under load: no
// request fails and the gRPC connections are reused, not re-dialled.
func TestGRPCReloadsKeepConnections(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 3)
	handler := cl.handlerJSON("")
	c := testcaddy.Start(t, handler)
	body := standin.RemoteWriteBody(500, 1)
	standin.WaitFor(t, 20*time.Second, "3 connections", func() bool { _, _, _ = push(c.Client, body); return cl.conns.Load() == 3 })

	for _, d := range cl.Distributors {
		d.Reset()
	}

	var acked, retried, failures atomic.Int64
	var firstErr atomic.Value
	stop := runLoad(t, 4, func(int) {
		// The distributors' count below proves that a retried request
		// never reached the gateway.
		resp, b, err := pushRetrying(c.Client, body, &retried)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("%s: %s", resp.Status, b)
		}
		if err != nil {
			failures.Add(1)
			firstErr.CompareAndSwap(nil, err)
		} else {
			acked.Add(1)
		}
	})
	for i := 0; i < 20; i++ {
		// Alternate between two configs that differ outside the
		// distributor backend, so every reload provisions anew.
		h := handler
		if i%2 == 0 {
			h = strings.Replace(handler, `"handler": "metrics_gateway",`, `"handler": "metrics_gateway", "default_tenant": "reload-`+strconv.Itoa(i)+`",`, 1)
		}
		if err := c.Reload(h); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		if got := cl.conns.Load(); got != 3 {
			t.Errorf("after reload %d: %d gRPC connections, want the same 3", i, got)
		}
	}
	stop()
	if n := failures.Load(); n > 0 {
		t.Errorf("%d requests failed during reloads, first: %v", n, firstErr.Load())
	}
	var received int64
	for _, n := range cl.Requests() {
		received += n
	}
	if received != acked.Load() {
		t.Errorf("distributors got %d pushes, clients were acknowledged %d", received, acked.Load())
	}
	t.Logf("%d pushes acknowledged during 20 reloads, %d retried after a connection closed unread", acked.Load(), retried.Load())
}

// TestAdminBackendsView reads /metrics_gateway/backends, kills an endpoint
// and sees its state change.
func TestAdminBackendsView(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 3)
	c := testcaddy.Start(t, cl.handlerJSON(""))
	body := standin.RemoteWriteBody(10, 1)
	states := func() map[string]caddymodule.EndpointStatus {
		out := map[string]caddymodule.EndpointStatus{}
		for _, bs := range backendStatuses(t, c) {
			if bs.Component == caddymodule.ComponentDistributor {
				if bs.Kind != caddymodule.KindGRPC {
					t.Errorf("distributor kind %q", bs.Kind)
				}
				for _, e := range bs.Endpoints {
					out[e.Address] = e
				}
			} else if bs.Component != caddymodule.ComponentDefault || bs.Kind != caddymodule.KindHTTP {
				t.Errorf("unexpected backend %+v", bs)
			}
		}
		return out
	}
	standin.WaitFor(t, 20*time.Second, "3 READY endpoints", func() bool {
		_, _, _ = push(c.Client, body)
		n := 0
		for _, e := range states() {
			if e.State == "READY" {
				n++
			}
		}
		return n == 3
	})
	victim := standin.GroupIP(1) + ":" + cl.Port
	cl.Servers[1].Stop()
	standin.WaitFor(t, 20*time.Second, "the stopped endpoint to leave READY", func() bool {
		return states()[victim].State != "READY"
	})
	var served uint64
	for _, e := range states() {
		served += e.Requests
	}
	if served == 0 {
		t.Error("no requests counted per endpoint")
	}
}

// TestGRPCRemovedRecord checks that an endpoint whose A record is removed
// gets no new requests once the next refresh has dropped it.
func TestGRPCRemovedRecord(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 3)
	c := testcaddy.Start(t, cl.handlerJSON(`"refresh": "200ms"`))
	body := standin.RemoteWriteBody(10, 1)
	standin.WaitFor(t, 20*time.Second, "traffic on all three", func() bool {
		_, _, _ = push(c.Client, body)
		return cl.Distributors[2].Requests() > 0 && cl.Distributors[1].Requests() > 0
	})

	cl.List(2)
	removed := standin.GroupIP(2) + ":" + cl.Port
	start := time.Now()
	standin.WaitFor(t, 20*time.Second, "the removed endpoint to leave the backend", func() bool {
		_, b, _ := c.AdminGet("/metrics_gateway/backends")
		return !strings.Contains(string(b), removed)
	})
	if took := time.Since(start); took > 200*time.Millisecond+time.Second {
		t.Errorf("removed endpoint left after %v, want within refresh + 1s", took)
	}
	before := cl.Distributors[2].Requests()
	for i := 0; i < 30; i++ {
		if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
			t.Fatalf("push: %v %q", err, b)
		}
	}
	if got := cl.Distributors[2].Requests() - before; got != 0 {
		t.Errorf("removed endpoint got %d new requests", got)
	}
}

// TestGRPCHungEndpointAndDisconnect checks the timeout (504, nothing piles
// up) and that a client going away cancels the call at the distributor.
func TestGRPCHungEndpointAndDisconnect(t *testing.T) {
	cl := startCluster(t, 1)
	c := testcaddy.Start(t, cl.handlerJSON(`"timeout": "300ms", "retries": 0`))
	body := standin.RemoteWriteBody(10, 1)
	if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %v %q", err, b)
	}
	baseline := standin.NumGoroutines()

	// A hung distributor answers nothing until released (not even when its
	// own deadline passes: it would race the gateway's timeout with a 200).
	release := make(chan struct{})
	cl.Distributors[0].SetBehavior(standin.HangUntil(release, nil))

	var wg sync.WaitGroup
	codes := make(chan int, 10)
	for i := 0; i < 10; i++ {
		wg.Go(func() {
			start := time.Now()
			resp, _, err := push(c.Client, body)
			if err != nil {
				t.Error(err)
				return
			}
			if took := time.Since(start); took < 300*time.Millisecond {
				t.Errorf("answered after %v, before the 300ms timeout", took)
			}
			codes <- resp.StatusCode
		})
	}
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != http.StatusGatewayTimeout {
			t.Errorf("hung endpoint: status %d, want 504", code)
		}
	}
	close(release)
	c.Client.CloseIdleConnections()
	standin.WaitGoroutines(t, baseline, 10)

	// A client that goes away: the distributor's request context ends.
	var canceled atomic.Int64
	cl.Distributors[0].SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		<-r.Context().Done()
		if errors.Is(r.Context().Err(), context.Canceled) {
			canceled.Add(1)
		}
		return true
	})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://gateway/api/v1/push", bytes.NewReader(body))
	req.Header.Set("X-Scope-OrgID", "tenant-1")
	served := cl.Distributors[0].Requests()
	done := make(chan error, 1)
	go func() {
		resp, err := c.Client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	standin.WaitFor(t, 20*time.Second, "the request to reach the distributor", func() bool { return cl.Distributors[0].Requests() > served })
	cancel()
	<-done
	standin.WaitFor(t, 20*time.Second, "the distributor to see the cancellation", func() bool { return canceled.Load() == 1 })
}

// TestGRPCReloadDrainsChangedBackend reloads to a config that changes the
// distributor's settings while a push is in flight: the old gRPC upstream
// is retired, and the push still completes on it.
func TestGRPCReloadDrainsChangedBackend(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	c := testcaddy.Start(t, cl.handlerJSON(`"timeout": "10s"`))
	body := standin.RemoteWriteBody(10, 1)
	if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %v %q", err, b)
	}
	release := make(chan struct{})
	cl.Distributors[0].SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		<-release
		return false // then answer normally
	})
	served := cl.Distributors[0].Requests()
	result := make(chan string, 1)
	client := oneConnClient(t, c)
	go func() {
		resp, b, err := push(client, body)
		if err != nil {
			result <- err.Error()
			return
		}
		result <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	standin.WaitFor(t, 20*time.Second, "the push to reach the distributor", func() bool { return cl.Distributors[0].Requests() > served })
	if err := c.Reload(cl.handlerJSON(`"timeout": "11s"`)); err != nil {
		t.Fatal(err)
	}
	cl.Distributors[0].SetBehavior(nil)
	close(release)
	if got := <-result; got != "200 " {
		t.Errorf("push in flight across the reload: %s, want 200", got)
	}
	resp, b, err := pushRetrying(c.Client, body, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("push after the reload: %v %q", err, b)
	}
}
