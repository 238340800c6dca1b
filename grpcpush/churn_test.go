package grpcpush

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grafana/dskit/httpgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// This file: endpoints that come and go while calls run.

// TestRetryGoesToAnotherEndpoint: a push refused UNAVAILABLE by a READY
// distributor (Mimir's instance limits) is retried on another one, under
// both policies and without passive health: least_conn prefers the
// refusing one (it answers at once, so has the fewest calls), and
// round_robin's rotation is shared with every other call.
func TestRetryGoesToAnotherEndpoint(t *testing.T) {
	for _, policy := range []string{LBLeastConn, LBRoundRobin} {
		t.Run(policy, func(t *testing.T) {
			var mu sync.Mutex
			attempts := map[string][]string{} // request id -> IPs tried, in order
			var sick string
			c := startCluster(t, 3, standin.WithUnaryInterceptors(
				func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
					id := ""
					if r, ok := req.(*httpgrpc.HTTPRequest); ok {
						for _, hd := range r.Headers {
							if hd.Key == "X-Review-Id" {
								id = hd.Values[0]
							}
						}
					}
					ip := localIP(ctx)
					mu.Lock()
					attempts[id] = append(attempts[id], ip)
					mu.Unlock()
					if ip == sick {
						return nil, status.Error(codes.Unavailable, "instance limit: too many in-flight push requests")
					}
					return next(ctx, req)
				}))
			sick = standin.GroupIP(0)
			h := newHandler(t, c, Options{LBPolicy: policy}) // retries 2 (default), no passive health
			waitReady(t, h, 3)
			body := standin.RemoteWriteBody(10, 1)
			const n, workers = 300, 4
			var failed503 sync.Map
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := w; i < n; i += workers {
						r := pushRequest(body)
						id := "r" + itoa(int32(i))
						r.Header.Set("X-Review-Id", id)
						if rec := serve(h, r); rec.Code != http.StatusOK {
							failed503.Store(id, rec.Code)
						}
					}
				})
			}
			wg.Wait()
			sameAgain, failed := 0, 0
			mu.Lock()
			for _, ips := range attempts {
				for i := 1; i < len(ips); i++ {
					if ips[i-1] == sick && ips[i] == sick {
						sameAgain++
					}
				}
			}
			mu.Unlock()
			failed503.Range(func(_, _ any) bool { failed++; return true })
			t.Logf("%s: %d retries went back to the endpoint that had just refused; %d of %d pushes failed although 2 of 3 endpoints were healthy",
				policy, sameAgain, failed, n)
			if sameAgain > 0 || failed > 0 {
				t.Errorf("%s: retries went to the refusing endpoint %d times, %d pushes failed", policy, sameAgain, failed)
			}
		})
	}
}

// TestConnectionRotationIsNoFailure: distributors that close their
// connections by age (GOAWAY, as Mimir's jsonnet sets them up) refuse the
// calls picked as a connection starts draining before any byte is sent;
// gRPC retries those, and passive health does not count them against a
// healthy distributor.
func TestConnectionRotationIsNoFailure(t *testing.T) {
	c := startCluster(t, 2, standin.WithServerOptions(grpc.KeepaliveParams(keepalive.ServerParameters{
		MaxConnectionAge: 50 * time.Millisecond, MaxConnectionAgeGrace: time.Minute})))
	h := newHandler(t, c, Options{FailDuration: time.Minute, MaxFails: 1, UnhealthyStatus: []int{5}})
	waitReady(t, h, 2)
	body := standin.RemoteWriteBody(10, 1)
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(2 * time.Second)
	for range 16 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if w := serve(h, pushRequest(body)); w.Code == http.StatusOK {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d pushes answered 200, %d failed", ok.Load(), failed.Load())
	for _, e := range h.Endpoints() {
		if !e.Healthy || e.LastFailure != "" {
			t.Errorf("%s: healthy %v, last failure %q: a healthy distributor that only rotated its connections was taken out",
				e.Address, e.Healthy, e.LastFailure)
		}
	}
}

// TestClosedHandlerLeavesNoSeries: a request reaching a Handler a reload
// has closed (503) does not bring back the target series Close deleted.
func TestClosedHandlerLeavesNoSeries(t *testing.T) {
	c := startCluster(t, 1)
	m := NewMetrics()
	h := newHandler(t, c, Options{Metrics: m})
	waitReady(t, h, 1)
	h.CloseWhenIdle(time.Minute) // a reload retired it; nothing in flight: closes now
	standin.WaitFor(t, 5*time.Second, "closed", h.closed.Load)
	if w := serve(h, pushRequest(standin.RemoteWriteBody(10, 1))); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("late request: %d %s", w.Code, w.Body)
	}
	if n := seriesCount(m.requests); n != 0 {
		t.Errorf("%d requests_total series of a closed Handler's target, want 0 (they stay for ever)", n)
	}
}

// TestHungEndpointAtStreamQuota: calls that wait out their deadline for a
// stream of a hung endpoint whose stream quota is full (Mimir's gRPC
// server allows 100 at once) send no byte, yet count as its failures:
// else an endpoint hung at its quota would never be taken out.
func TestHungEndpointAtStreamQuota(t *testing.T) {
	c := startCluster(t, 1,
		standin.WithServerOptions(grpc.MaxConcurrentStreams(1)),
		standin.WithUnaryInterceptors(func(ctx context.Context, _ any, _ *grpc.UnaryServerInfo, _ grpc.UnaryHandler) (any, error) {
			<-ctx.Done() // hung
			return nil, ctx.Err()
		}))
	h := newHandler(t, c, Options{Timeout: time.Second, FailDuration: time.Minute, MaxFails: 3})
	waitReady(t, h, 1)
	body := standin.RemoteWriteBody(10, 1)
	var wg sync.WaitGroup
	answers := make([]int, 4) // 1 holds the one stream, 3 wait for it
	for i := range answers {
		wg.Go(func() { answers[i] = serve(h, pushRequest(body)).Code })
	}
	wg.Wait()
	for _, code := range answers {
		if code != http.StatusGatewayTimeout {
			t.Fatalf("answers %v, want 504 each", answers)
		}
	}
	standin.WaitFor(t, 20*time.Second, "the hung endpoint out (4 failures, max_fails 3)", func() bool {
		eps := h.Endpoints()
		return len(eps) == 1 && !eps[0].Healthy
	})
}
