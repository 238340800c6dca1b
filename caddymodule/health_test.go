package caddymodule_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/metrics-gateway/metrics_gateway/caddymodule"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// endpoints returns the distributor's endpoints from the admin view.
func endpoints(t *testing.T, c *testcaddy.Caddy) map[string]caddymodule.EndpointStatus {
	t.Helper()
	out := map[string]caddymodule.EndpointStatus{}
	for _, bs := range backendStatuses(t, c) {
		if bs.Component == caddymodule.ComponentDistributor {
			for _, e := range bs.Endpoints {
				out[e.Address] = e
			}
		}
	}
	return out
}

// backendStatuses returns the admin view /metrics_gateway/backends.
func backendStatuses(t *testing.T, c *testcaddy.Caddy) []caddymodule.BackendStatus {
	t.Helper()
	code, b, err := c.AdminGet("/metrics_gateway/backends")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics_gateway/backends: %d %v %s", code, err, b)
	}
	var got []caddymodule.BackendStatus
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return got
}

// healthyMetric returns the value of metrics_gateway_grpc_endpoint_healthy
// for the distributor endpoint addr, or "" when there is none.
func healthyMetric(t *testing.T, c *testcaddy.Caddy, addr string) string {
	t.Helper()
	v, ok := adminMetric(t, c, "metrics_gateway_grpc_endpoint_healthy", `backend="distributor"`, `endpoint="`+addr+`"`)
	if !ok {
		return ""
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// warmUp pushes until all n endpoints are READY, then zeroes the counters.
func warmUp(t *testing.T, cl *cluster, c *testcaddy.Caddy, n int) {
	t.Helper()
	body := standin.RemoteWriteBody(10, 1)
	standin.WaitFor(t, 20*time.Second, fmt.Sprintf("%d READY endpoints", n), func() bool {
		_, _, _ = push(c.Client, body)
		ready := 0
		for _, e := range endpoints(t, c) {
			if e.State == "READY" {
				ready++
			}
		}
		return ready == n
	})
	for _, d := range cl.Distributors {
		d.Reset()
	}
}

// TestGRPCLeastConnSlowEndpoint: under concurrent load, least_conn sends a
// distributor that answers 100 ms late a smaller share than the others
// (round_robin would send it exactly a third). 100 ms rather than the
// benchmark's 20 ms, so that a busy machine slowing every distributor
// down does not even the shares out.
func TestGRPCLeastConnSlowEndpoint(t *testing.T) {
	cl := startCluster(t, 3)
	c := testcaddy.Start(t, cl.handlerJSON(`"lb_policy": "least_conn"`))
	warmUp(t, cl, c, 3)
	cl.Distributors[2].SetBehavior(standin.AnswerAfter(100 * time.Millisecond))
	body := standin.RemoteWriteBody(100, 1)

	var done, failed atomic.Int64
	stop := runLoad(t, 8, func(int) {
		if resp, _, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
			failed.Add(1)
		}
		done.Add(1)
	})
	standin.WaitFor(t, 20*time.Second, "1200 pushes", func() bool { return done.Load() >= 1200 })
	stop()
	counts := cl.Requests()
	if failed.Load() > 0 {
		t.Errorf("%d pushes failed", failed.Load())
	}
	othersMean := float64(counts[0]+counts[1]) / 2
	if float64(counts[2]) > 0.8*othersMean {
		t.Errorf("slow distributor got %d requests, others %v: want well below their mean %.0f", counts[2], counts[:2], othersMean)
	}
	t.Logf("per-distributor requests %v (the third is 100 ms slow)", counts)
}

// TestGRPCPassiveHealthLatency: a distributor slower than unhealthy_latency
// is taken out after max_fails slow calls and then gets no calls.
func TestGRPCPassiveHealthLatency(t *testing.T) {
	cl := startCluster(t, 3)
	c := testcaddy.Start(t, cl.handlerJSON(`"fail_duration": "60s", "max_fails": 2, "unhealthy_latency": "250ms"`))
	warmUp(t, cl, c, 3)
	slow := cl.Addr(1)
	cl.Distributors[1].SetBehavior(standin.AnswerAfter(500 * time.Millisecond))
	body := standin.RemoteWriteBody(10, 1)

	standin.WaitFor(t, 20*time.Second, "the slow endpoint to be out", func() bool {
		if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
			t.Fatalf("push: %v %q", err, b)
		}
		return !endpoints(t, c)[slow].Healthy
	})
	st := endpoints(t, c)[slow]
	if st.UnhealthyUntil == nil || !strings.Contains(st.LastFailure, "unhealthy_latency") {
		t.Errorf("admin view of the slow endpoint: %+v, want unhealthy_until and a latency failure", st)
	}
	if got := cl.Distributors[1].Requests(); got != 2 {
		t.Errorf("slow endpoint got %d calls before it was out, want max_fails = 2", got)
	}
	for i := 0; i < 30; i++ {
		if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
			t.Fatalf("push: %v %q", err, b)
		}
	}
	if got := cl.Distributors[1].Requests(); got != 2 {
		t.Errorf("slow endpoint got %d more calls while out", got-2)
	}
	for _, i := range []int{0, 2} {
		if !endpoints(t, c)[cl.Addr(i)].Healthy {
			t.Errorf("healthy endpoint %s was taken out", cl.Addr(i))
		}
	}
}

// TestGRPCPassiveHealthStatus: a distributor answering 503 is out after
// max_fails failures, gets no calls while out, shows so in the admin view
// and the metric, and gets calls again once its failures aged out.
func TestGRPCPassiveHealthStatus(t *testing.T) {
	cl := startCluster(t, 3)
	c := testcaddy.Start(t, cl.handlerJSON(`"retries": 0, "fail_duration": "2s", "max_fails": 3, "unhealthy_status": [5]`))
	warmUp(t, cl, c, 3)
	sick := cl.Addr(2)
	if v := healthyMetric(t, c, sick); v != "1" {
		t.Fatalf("endpoint_healthy of a healthy endpoint = %q, want 1", v)
	}
	cl.Distributors[2].SetBehavior(standin.Answer503)
	body := standin.RemoteWriteBody(10, 1)

	var status503 int
	standin.WaitFor(t, 20*time.Second, "the 503 endpoint to be out", func() bool {
		resp, _, err := push(c.Client, body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == 503 {
			status503++
		}
		return !endpoints(t, c)[sick].Healthy
	})
	st := endpoints(t, c)[sick]
	if got := cl.Distributors[2].Requests(); got != 3 || status503 != 3 {
		t.Errorf("503 endpoint got %d calls (%d answered 503) before it was out, want max_fails = 3", got, status503)
	}
	if st.UnhealthyUntil == nil || st.LastFailure != "status 503" || st.State != "READY" {
		t.Fatalf("admin view of the 503 endpoint: %+v, want READY, unhealthy_until, status 503", st)
	}
	if v := healthyMetric(t, c, sick); v != "0" {
		t.Errorf("endpoint_healthy of the endpoint that is out = %q, want 0", v)
	}

	// While out: no calls. Push only well before it comes back.
	for i := 0; i < 50 && time.Until(*st.UnhealthyUntil) > 500*time.Millisecond; i++ {
		if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
			t.Fatalf("push while the sick endpoint is out: %v %q", err, b)
		}
	}
	if got := cl.Distributors[2].Requests(); got != 3 {
		t.Errorf("the endpoint that is out got %d calls", got-3)
	}

	// Back after fail_duration: it gets calls again.
	cl.Distributors[2].SetBehavior(nil)
	standin.WaitFor(t, 20*time.Second, "the endpoint to come back", func() bool { return endpoints(t, c)[sick].Healthy })
	if time.Now().Before(*st.UnhealthyUntil) {
		t.Errorf("endpoint came back before %v", st.UnhealthyUntil)
	}
	standin.WaitFor(t, 20*time.Second, "calls to the endpoint that came back", func() bool {
		_, _, _ = push(c.Client, body)
		return cl.Distributors[2].Requests() > 3
	})
	if v := healthyMetric(t, c, sick); v != "1" {
		t.Errorf("endpoint_healthy after coming back = %q, want 1", v)
	}
}

// TestGRPCPassiveHealthAllOut: with every endpoint out, calls go to all of
// them rather than nowhere.
func TestGRPCPassiveHealthAllOut(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 2)
	c := testcaddy.Start(t, cl.handlerJSON(`"retries": 0, "fail_duration": "60s", "unhealthy_status": [503]`))
	warmUp(t, cl, c, 2)
	for _, d := range cl.Distributors {
		d.SetBehavior(standin.Answer503)
	}
	body := standin.RemoteWriteBody(10, 1)
	standin.WaitFor(t, 20*time.Second, "both endpoints out", func() bool {
		_, _, _ = push(c.Client, body)
		eps := endpoints(t, c)
		return !eps[cl.Addr(0)].Healthy && !eps[cl.Addr(1)].Healthy
	})
	before := cl.Requests()
	for i := 0; i < 20; i++ {
		resp, b, err := push(c.Client, body)
		if err != nil || resp.StatusCode != 503 || !strings.Contains(string(b), "ingesters down") {
			t.Fatalf("push with all out: %v %d %q, want the distributors' own 503", err, resp.StatusCode, b)
		}
	}
	after := cl.Requests()
	for i := range after {
		if after[i] == before[i] {
			t.Errorf("with every endpoint out, %s got no calls (%v → %v)", cl.Addr(i), before, after)
		}
	}
}

// TestGRPCRetrySkipsEndpointOut: a call retried after UNAVAILABLE goes to
// an endpoint that is in, never to one that is out.
func TestGRPCRetrySkipsEndpointOut(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 3)
	c := testcaddy.Start(t, cl.handlerJSON(`"retries": 2, "fail_duration": "60s", "max_fails": 2, "unhealthy_status": [503]`))
	warmUp(t, cl, c, 3)
	body := standin.RemoteWriteBody(10, 1)

	// The second endpoint is out: it answers 503.
	out := cl.Addr(1)
	cl.Distributors[1].SetBehavior(standin.Answer503)
	standin.WaitFor(t, 20*time.Second, "the 503 endpoint to be out", func() bool {
		_, _, _ = push(c.Client, body)
		return !endpoints(t, c)[out].Healthy
	})
	calls := cl.Distributors[1].Requests()

	// The first answers UNAVAILABLE, which gRPC retries on another endpoint.
	flaky := cl.Addr(0)
	var flakyCalls atomic.Int64
	raw := func(ctx context.Context) error {
		if p, ok := peer.FromContext(ctx); ok && p.LocalAddr != nil && p.LocalAddr.String() == flaky {
			flakyCalls.Add(1)
			return status.Error(codes.Unavailable, "shutting down")
		}
		return nil
	}
	cl.raw.Store(&raw)
	defer cl.raw.Store(nil)
	for i := 0; i < 30; i++ {
		if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
			t.Fatalf("push %d: %v %q, want the retry to succeed on %s", i, err, b, cl.Addr(2))
		}
	}
	if flakyCalls.Load() == 0 {
		t.Fatal("no call went to the UNAVAILABLE endpoint: nothing was retried")
	}
	if got := cl.Distributors[1].Requests() - calls; got != 0 {
		t.Errorf("the endpoint that is out got %d calls (retries)", got)
	}
	t.Logf("%d calls to the UNAVAILABLE endpoint were retried", flakyCalls.Load())
}
