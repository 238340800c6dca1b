package grpcpush

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	zapobserver "go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// TestPassiveHealthLogs checks the info lines for an endpoint going out and
// coming back, each naming the endpoint and the failure.
func TestPassiveHealthLogs(t *testing.T) {
	c := startCluster(t, 2)
	core, logs := zapobserver.New(zapcore.InfoLevel)
	h := newHandler(t, c, Options{Logger: zap.New(core), Retries: Ptr(0),
		FailDuration: 300 * time.Millisecond, MaxFails: 1, UnhealthyStatus: []int{503}})
	waitReady(t, h, 2)
	c.Distributors[1].SetBehavior(standin.Answer503)
	body := standin.RemoteWriteBody(10, 1)
	sick := c.Addr(1)
	standin.WaitFor(t, 10*time.Second, "the out line", func() bool {
		serve(h, pushRequest(body))
		return logs.FilterMessageSnippet("endpoint out").Len() > 0
	})
	out := logs.FilterMessageSnippet("endpoint out").All()[0].ContextMap()
	if out["endpoint"] != sick || out["failure"] != "status 503" || out["backend"] != DefaultBackendName {
		t.Errorf("out line %v, want endpoint %s and failure status 503", out, sick)
	}
	standin.WaitFor(t, 10*time.Second, "the back line", func() bool {
		return logs.FilterMessageSnippet("endpoint back").Len() > 0
	})
	back := logs.FilterMessageSnippet("endpoint back").All()[0].ContextMap()
	if back["endpoint"] != sick || back["last_failure"] != "status 503" {
		t.Errorf("back line %v", back)
	}
}

// TestHealthOptionsChecked checks that bad policy and health values fail New
// with the field's name.
func TestHealthOptionsChecked(t *testing.T) {
	c := startCluster(t, 1)
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{LBPolicy: "random"}, `lb_policy "random"`},
		{Options{FailDuration: time.Second, MaxFails: -1}, "max_fails -1"},
		{Options{FailDuration: -time.Second}, "fail_duration -1s"},
		{Options{FailDuration: time.Second, UnhealthyStatus: []int{600}}, "unhealthy_status 600"},
		{Options{FailDuration: time.Second, UnhealthyLatency: -1}, "unhealthy_latency"},
		{Options{MaxFails: 2}, "need fail_duration"},
	} {
		tc.opts.Target = c.Target()
		if _, err := New(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v): %v, want it to mention %q", tc.opts, err, tc.want)
		}
	}
	a, _ := Options{Target: c.Target()}.Key()
	b, _ := Options{Target: c.Target(), LBPolicy: LBLeastConn}.Key()
	d, _ := Options{Target: c.Target(), FailDuration: time.Second}.Key()
	if a == b || a == d {
		t.Error("Key ignores lb_policy or passive health settings")
	}
}

// TestLeastConnBalancedWhenHealthy checks that least_conn spreads calls
// evenly over equal endpoints.
func TestLeastConnBalancedWhenHealthy(t *testing.T) {
	c := startCluster(t, 3)
	h := newHandler(t, c, Options{LBPolicy: LBLeastConn})
	waitReady(t, h, 3)
	body := standin.RemoteWriteBody(10, 1)
	for i := 0; i < 600; i++ {
		if w := serve(h, pushRequest(body)); w.Code != http.StatusOK {
			t.Fatalf("push: %d %s", w.Code, w.Body)
		}
	}
	for i, n := range c.Requests() {
		// Sequential calls: least_request's two random choices both see 0
		// in flight, so the choice is uniform; 600 calls give ~200 ± 12.
		if n < 140 || n > 260 {
			t.Errorf("distributor %d got %d of 600 calls", i, n)
		}
	}
}

// TestSharedStallNotCounted: when every endpoint is slow at once (the
// gateway's node or the network paused), the latency rule takes none of
// them out; when one endpoint is slow while the others answer in time, it
// takes that one out.
func TestSharedStallNotCounted(t *testing.T) {
	c := startCluster(t, 3)
	core, logs := zapobserver.New(zapcore.InfoLevel)
	h := newHandler(t, c, Options{Logger: zap.New(core), Retries: Ptr(0),
		FailDuration: time.Minute, MaxFails: 1, UnhealthyLatency: 100 * time.Millisecond})
	waitReady(t, h, 3)
	body := standin.RemoteWriteBody(10, 1)

	// Every distributor holds its calls until all three hold some, and
	// 200 ms longer: every call in flight ends late, all at once.
	release := make(chan struct{})
	var held [3]atomic.Int64
	for i, d := range c.Distributors {
		d.SetBehavior(standin.HoldUntil(release, &held[i]))
	}
	pushThroughPause(t, h, body, release, "calls held by every distributor", func() bool {
		return held[0].Load() > 0 && held[1].Load() > 0 && held[2].Load() > 0
	})
	for _, e := range h.Endpoints() {
		if !e.Healthy || e.LastFailure != "" {
			t.Errorf("after a stall of every endpoint: %s healthy %v, last failure %q; want none counted", e.Address, e.Healthy, e.LastFailure)
		}
	}

	// Now only the second is slow: calls to the others begin and end in
	// time while its calls are in flight.
	for _, d := range c.Distributors {
		d.SetBehavior(nil)
	}
	c.Distributors[1].SetBehavior(standin.AnswerAfter(300 * time.Millisecond))
	var out atomic.Bool
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := 0; i < 200 && !out.Load(); i++ {
				serve(h, pushRequest(body))
			}
		})
	}
	standin.WaitFor(t, 20*time.Second, "the slow endpoint out", func() bool {
		return logs.FilterMessageSnippet("endpoint out").Len() > 0
	})
	out.Store(true)
	wg.Wait()
	outs := logs.FilterMessageSnippet("endpoint out").All()
	if len(outs) != 1 || outs[0].ContextMap()["endpoint"] != c.Addr(1) {
		t.Errorf("endpoints taken out: %v, want only %s", outs, c.Addr(1))
	}
}

// TestOverlappingLateCallsCountOnce: late calls of one endpoint that were
// in flight together (one pause of that distributor) are one failure; a
// late call that began after them is the next.
func TestOverlappingLateCallsCountOnce(t *testing.T) {
	c := startCluster(t, 3)
	h := newHandler(t, c, Options{Retries: Ptr(0),
		FailDuration: time.Minute, MaxFails: 2, UnhealthyLatency: 100 * time.Millisecond})
	waitReady(t, h, 3)
	body := standin.RemoteWriteBody(10, 1)
	slow := c.Addr(1)

	// The second distributor holds its three calls (round_robin: 9 calls,
	// three each) until all three are held, and 200 ms longer. The others
	// answer at once, so nothing else is in flight while they are late.
	release := make(chan struct{})
	var held atomic.Int64
	c.Distributors[1].SetBehavior(standin.HoldUntil(release, &held))
	pushThroughPause(t, h, body, release, "three calls held", func() bool { return held.Load() == 3 })
	status := func() EndpointStatus { return endpointStatus(t, h, slow) }
	if st := status(); !st.Healthy || !strings.Contains(st.LastFailure, "unhealthy_latency") {
		t.Fatalf("after one pause with 3 late calls: healthy %v, last failure %q; want one failure counted (max_fails 2)", st.Healthy, st.LastFailure)
	}

	// One more late call, begun after the pause: the second failure.
	c.Distributors[1].SetBehavior(standin.AnswerAfter(200 * time.Millisecond))
	standin.WaitFor(t, 10*time.Second, "the slow endpoint out", func() bool {
		serve(h, pushRequest(body))
		return !status().Healthy
	})
	if got := c.Distributors[1].Requests(); got != 4 {
		t.Errorf("the slow endpoint got %d calls before it was out, want 3 (one pause) + 1", got)
	}
}

// TestLastEndpointInNotTakenOutForLatency: with every other endpoint out, a
// late call of the last one in does not count (taking it out would put the
// sick ones back in); a status failure still does.
func TestLastEndpointInNotTakenOutForLatency(t *testing.T) {
	c := startCluster(t, 2)
	core, logs := zapobserver.New(zapcore.DebugLevel)
	h := newHandler(t, c, Options{Logger: zap.New(core), Retries: Ptr(0), FailDuration: time.Minute, MaxFails: 1,
		UnhealthyStatus: []int{503}, UnhealthyLatency: 100 * time.Millisecond})
	waitReady(t, h, 2)
	body := standin.RemoteWriteBody(10, 1)
	healthy := func(addr string) (bool, string) {
		st := endpointStatus(t, h, addr)
		return st.Healthy, st.LastFailure
	}
	c.Distributors[1].SetBehavior(standin.Answer503)
	standin.WaitFor(t, 10*time.Second, "the 503 endpoint out", func() bool {
		serve(h, pushRequest(body))
		ok, _ := healthy(c.Addr(1))
		return !ok
	})

	c.Distributors[0].SetBehavior(standin.AnswerAfter(250 * time.Millisecond))
	for range 3 {
		if w := serve(h, pushRequest(body)); w.Code != http.StatusOK {
			t.Fatalf("push to the last endpoint in: %d %s", w.Code, w.Body)
		}
	}
	if ok, last := healthy(c.Addr(0)); !ok || last != "" {
		t.Errorf("last endpoint in after 3 late calls: healthy %v, last failure %q; want none counted", ok, last)
	}
	if n := logs.FilterMessage("late call not counted: every other endpoint is out").Len(); n != 3 {
		t.Errorf("%d debug lines for late calls not counted, want 3", n)
	}
	if ok, _ := healthy(c.Addr(1)); ok {
		t.Error("the 503 endpoint came back within its minute")
	}

	c.Distributors[0].SetBehavior(standin.Answer503)
	serve(h, pushRequest(body))
	if ok, last := healthy(c.Addr(0)); ok || last != "status 503" {
		t.Errorf("last endpoint in after a 503: healthy %v, last failure %q; want out", ok, last)
	}
}

// endpointStatus is h's admin view of the endpoint addr.
func endpointStatus(t *testing.T, h *Handler, addr string) EndpointStatus {
	t.Helper()
	for _, e := range h.Endpoints() {
		if e.Address == addr {
			return e
		}
	}
	t.Fatalf("no endpoint %s", addr)
	return EndpointStatus{}
}

// pushThroughPause sends 9 pushes at once (round_robin: three to each
// distributor), waits until the held calls are where they should be, lets
// 200 ms pass (the pause itself) and releases them; every push must succeed.
func pushThroughPause(t *testing.T, h *Handler, body []byte, release chan struct{}, what string, held func() bool) {
	t.Helper()
	codes := make(chan int, 9)
	for range 9 {
		go func() { codes <- serve(h, pushRequest(body)).Code }()
	}
	standin.WaitFor(t, 10*time.Second, what, held)
	<-time.After(200 * time.Millisecond)
	close(release)
	for range 9 {
		if code := <-codes; code != http.StatusOK {
			t.Fatalf("push through the pause: %d", code)
		}
	}
}

// lateBody is a request body that arrives whole at a given moment.
type lateBody struct {
	at   time.Time
	body []byte
	done bool
}

func (b *lateBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	time.Sleep(time.Until(b.at))
	b.done = true
	return copy(p, b.body), io.EOF
}

// TestLateUploadDoesNotTakeEndpointOut: a push whose body arrives just
// before the timeout leaves its call almost no time; the call running out
// of time is then not the endpoint's failure (it had less than half the
// timeout), though the client still gets 504. A call that had its fair
// share and ran out still counts.
func TestLateUploadDoesNotTakeEndpointOut(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	const timeout = 2 * time.Second
	h := newHandler(t, c, Options{Timeout: timeout, Retries: Ptr(0), FailDuration: time.Minute, MaxFails: 1})
	waitReady(t, h, 1)
	c.Distributors[0].SetBehavior(standin.AnswerAfter(100 * time.Millisecond))
	body := standin.RemoteWriteBody(10, 1)

	r := pushRequest(nil)
	r.Body = io.NopCloser(&lateBody{at: time.Now().Add(timeout - 10*time.Millisecond), body: body})
	r.ContentLength = int64(len(body))
	if w := serve(h, r); w.Code != http.StatusGatewayTimeout {
		t.Fatalf("late upload: %d %q, want 504", w.Code, w.Body)
	}
	if st := endpointStatus(t, h, c.Addr(0)); !st.Healthy {
		t.Errorf("a healthy endpoint was taken out by a client's slow upload: %q", st.LastFailure)
	}

	c.Distributors[0].SetBehavior(standin.AnswerAfter(2 * timeout))
	if w := serve(h, pushRequest(body)); w.Code != http.StatusGatewayTimeout {
		t.Fatalf("hung endpoint: %d %q, want 504", w.Code, w.Body)
	}
	if st := endpointStatus(t, h, c.Addr(0)); st.Healthy || st.LastFailure != "DeadlineExceeded" {
		t.Errorf("an endpoint that had the whole timeout and did not answer: healthy %v, %q; want out", st.Healthy, st.LastFailure)
	}
}

// TestCanceledOnTheWayIsRetriable: a call canceled by the endpoint or a
// proxy in between (gRPC CANCELLED) while the client is still there is
// answered 503, which remote-write clients retry, never 499, and counts
// against the endpoint; a client that goes away does not.
func TestCanceledOnTheWayIsRetriable(t *testing.T) {
	var cancel atomic.Bool
	c := startCluster(t, 2, standin.WithUnaryInterceptors(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		if cancel.Load() {
			return nil, status.Error(codes.Canceled, "stream reset by sidecar")
		}
		return next(ctx, req)
	}))
	h := newHandler(t, c, Options{Retries: Ptr(0), FailDuration: time.Minute, MaxFails: 1})
	waitReady(t, h, 2)
	body := standin.RemoteWriteBody(10, 1)

	// The client goes away while its call is held: nothing counts.
	release := make(chan struct{})
	var held atomic.Int64
	c.Distributors[0].SetBehavior(standin.HoldUntil(release, &held))
	c.Distributors[1].SetBehavior(standin.HoldUntil(release, &held))
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan int)
	go func() { done <- serve(h, pushRequest(body).WithContext(ctx)).Code }()
	standin.WaitFor(t, 10*time.Second, "the call held", func() bool { return held.Load() == 1 })
	stop()
	<-done
	close(release)
	for i := range 2 {
		if st := endpointStatus(t, h, c.Addr(i)); !st.Healthy {
			t.Errorf("endpoint %d out after a client went away: %q", i, st.LastFailure)
		}
	}

	cancel.Store(true)
	w := serve(h, pushRequest(body))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("canceled on the way: %d %q Retry-After %q, want 503 with Retry-After", w.Code, w.Body, w.Header().Get("Retry-After"))
	}
	out := 0
	for i := range 2 {
		if st := endpointStatus(t, h, c.Addr(i)); !st.Healthy {
			out++
		}
	}
	if out != 1 {
		t.Errorf("%d endpoints out after one canceled call, want 1", out)
	}
}

// TestHealthNotReplayedAcrossReconnect: an endpoint that passive health
// took out loses its connection and reconnects to a peer that never
// finishes the HTTP/2 handshake. When its failures age out, the health it
// had on the old connection must not be replayed to the balancer as READY:
// a call picked for it would wait, with no transport, until its timeout
// (504) while the other endpoint is healthy.
func TestHealthNotReplayedAcrossReconnect(t *testing.T) {
	c := startCluster(t, 2)
	h := newHandler(t, c, Options{Retries: Ptr(0), Timeout: 3 * time.Second,
		FailDuration: time.Second, MaxFails: 1, UnhealthyStatus: []int{503}})
	waitReady(t, h, 2)
	sick := c.Addr(0)
	c.Distributors[0].SetBehavior(standin.Answer503)
	body := standin.RemoteWriteBody(10, 1)
	standin.WaitFor(t, 20*time.Second, "the endpoint answering 503 out", func() bool {
		serve(h, pushRequest(body))
		return !endpointStatus(t, h, sick).Healthy
	})
	c.Servers[0].Stop()
	listenSilent(t, sick)
	standin.WaitFor(t, 20*time.Second, "the endpoint reconnecting, its failures aged out", func() bool {
		e := endpointStatus(t, h, sick)
		return e.State != "READY" && e.Healthy
	})
	for i := range 10 {
		if w := serve(h, pushRequest(body)); w.Code != http.StatusOK {
			t.Fatalf("push %d with one endpoint READY and the other reconnecting: %d %s", i, w.Code, w.Body)
		}
	}
}
