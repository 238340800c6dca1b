package grpcpush

import (
	"context"
	"crypto/sha256"
	"net/http"
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

// failingZone is a cluster whose servers answer every call UNAVAILABLE
// while fail is set, with their connections up and READY, like a zone
// whose distributors are shutting down.
type failingZone struct {
	*cluster
	fail atomic.Bool
}

func startFailingZone(t *testing.T, n int) *failingZone {
	z := &failingZone{}
	z.cluster = startCluster(t, n, standin.WithUnaryInterceptors(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
			if z.fail.Load() {
				return nil, status.Error(codes.Unavailable, "shutting down")
			}
			return next(ctx, req)
		}))
	return z
}

func total(c *cluster) int64 {
	var n int64
	for _, r := range c.Requests() {
		n += r
	}
	return n
}

// TestPrioritySpillsUnavailable: a call that fails UNAVAILABLE on every
// endpoint of the first group is answered by the second, with the same
// body; with retries 0 it is not.
func TestPrioritySpillsUnavailable(t *testing.T) {
	t.Parallel()
	a, b := startFailingZone(t, 2), startCluster(t, 2)
	for _, d := range b.Distributors {
		d.KeepRecords(100)
	}
	ha, hb := newHandler(t, a.cluster, Options{}), newHandler(t, b, Options{})
	waitReady(t, ha, 2)
	waitReady(t, hb, 2)
	p, err := NewPriority([]*Handler{ha, hb}, PriorityOptions{MinReady: 1})
	if err != nil {
		t.Fatal(err)
	}
	body := standin.RemoteWriteBody(100, 1)
	for i := 0; i < 10; i++ {
		if w := serve(p, pushRequest(body)); w.Code != http.StatusOK {
			t.Fatalf("push %d: %d %s", i, w.Code, w.Body)
		}
	}
	if total(a.cluster) != 10 || total(b) != 0 {
		t.Fatalf("requests a %v b %v, want all 10 in a", a.Requests(), b.Requests())
	}

	a.fail.Store(true)
	callsBefore := a.Servers[0].Calls() + a.Servers[1].Calls()
	for i := 0; i < 20; i++ {
		if w := serve(p, pushRequest(body)); w.Code != http.StatusOK {
			t.Fatalf("push %d with group a failing: %d %s", i, w.Code, w.Body)
		}
	}
	if got := total(b); got != 20 {
		t.Errorf("group b got %d pushes, want 20", got)
	}
	if calls := a.Servers[0].Calls() + a.Servers[1].Calls() - callsBefore; calls < 20 {
		t.Errorf("group a saw %d calls, want every push tried there first", calls)
	}
	sum := sha256.Sum256(body)
	for _, d := range b.Distributors {
		for _, r := range d.Records() {
			if r.BodySHA256 != sum || r.Tenant != testTenant {
				t.Fatalf("spilled request arrived changed: %+v", r)
			}
		}
	}
	if eps := hb.Endpoints(); eps[0].Requests+eps[1].Requests != 20 {
		t.Errorf("group b endpoints counted %+v, want 20 calls", eps)
	}

	// Without retries nothing is retried, not even in another group.
	ha0 := newHandler(t, a.cluster, Options{Retries: Ptr(0)})
	hb0 := newHandler(t, b, Options{Retries: Ptr(0)})
	waitReady(t, ha0, 2)
	p0, _ := NewPriority([]*Handler{ha0, hb0}, PriorityOptions{MinReady: 1})
	if w := serve(p0, pushRequest(body)); w.Code != http.StatusServiceUnavailable {
		t.Errorf("retries 0: %d %s, want 503", w.Code, w.Body)
	}
}

// TestPriorityLogsGroupChanges: the serving group moves to the second when
// the first has no READY endpoint, and back when its DNS name answers a
// live one; each move is logged at info.
func TestPriorityLogsGroupChanges(t *testing.T) {
	a, b := startCluster(t, 2), startCluster(t, 1)
	a.List(1)
	ha := newHandler(t, a, Options{Refresh: 100 * time.Millisecond})
	hb := newHandler(t, b, Options{Refresh: 100 * time.Millisecond})
	waitReady(t, ha, 1)
	waitReady(t, hb, 1)
	core, logs := zapobserver.New(zapcore.InfoLevel)
	p, _ := NewPriority([]*Handler{ha, hb}, PriorityOptions{MinReady: 1, Logger: zap.New(core)})
	body := standin.RemoteWriteBody(10, 1)
	push := func() {
		t.Helper()
		if w := serve(p, pushRequest(body)); w.Code != http.StatusOK {
			t.Fatalf("push: %d %s", w.Code, w.Body)
		}
	}
	push()
	if n := logs.FilterMessage("serving group changed").Len(); n != 0 {
		t.Fatalf("%d group changes logged with group a serving", n)
	}

	a.Servers[0].Stop()
	standin.WaitFor(t, 20*time.Second, "group b to serve", func() bool { return p.Current() == 1 })
	push()
	a.ListOnly(1)
	standin.WaitFor(t, 20*time.Second, "group a to serve again", func() bool { return p.Current() == 0 })
	push()
	moves := logs.FilterMessage("serving group changed").All()
	if len(moves) != 2 {
		t.Fatalf("%d group changes logged, want 2: %+v", len(moves), moves)
	}
	for i, want := range []struct{ from, to string }{{a.Target(), b.Target()}, {b.Target(), a.Target()}} {
		f := moves[i].ContextMap()
		if f["from"] != want.from || f["to"] != want.to {
			t.Errorf("move %d logged %v, want from %s to %s", i+1, f, want.from, want.to)
		}
	}
	if got := b.Requests()[0]; got != 1 {
		t.Errorf("group b got %d pushes, want the 1 sent while group a was down", got)
	}
}

// BenchmarkPriorityServing is the cost the group choice adds to a request:
// counting the first group's READY and healthy endpoints (3 of them), and
// with the first group down, the first two groups'.
func BenchmarkPriorityServing(b *testing.B) {
	a, c := startCluster(b, 3), startCluster(b, 3)
	ha, hc := newHandler(b, a, Options{}), newHandler(b, c, Options{})
	waitReady(b, ha, 3)
	waitReady(b, hc, 3)
	b.Run("first-group-serving", func(b *testing.B) {
		p, _ := NewPriority([]*Handler{ha, hc}, PriorityOptions{MinReady: 1})
		for b.Loop() {
			if p.Current() != 0 {
				b.Fatal("first group not serving")
			}
		}
	})
	b.Run("first-group-below-min-ready", func(b *testing.B) {
		p, _ := NewPriority([]*Handler{ha, hc}, PriorityOptions{MinReady: 4}) // 3 ready < 4: the fallback scan
		for b.Loop() {
			p.Current()
		}
	})
}

// TestPriorityLastEndpointOutForLatency: in a group that a later group
// backs, the last endpoint in is taken out for latency like any other, and
// the requests move to the next group; in the last group it is not
// (TestLastEndpointInNotTakenOutForLatency).
func TestPriorityLastEndpointOutForLatency(t *testing.T) {
	a, b, ha, hb := latencyGroups(t)
	p, err := NewPriority([]*Handler{ha, hb}, PriorityOptions{MinReady: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Another configuration (a second site) lists the same targets the
	// other way round: there group a is the last. That must change nothing
	// for p, whose requests have group b after a.
	if _, err := NewPriority([]*Handler{hb, ha}, PriorityOptions{MinReady: 1}); err != nil {
		t.Fatal(err)
	}
	body := standin.RemoteWriteBody(10, 1)
	takeOut503(t, p, a, ha, body)
	a.Distributors[0].SetBehavior(standin.AnswerAfter(250 * time.Millisecond))
	if w := serve(p, pushRequest(body)); w.Code != http.StatusOK {
		t.Fatalf("late push: %d %s", w.Code, w.Body)
	}
	if n := ha.Available(); n != 0 {
		t.Fatalf("group a serves with %d endpoints after its last one was late, want 0", n)
	}
	before := b.Requests()[0]
	for i := 0; i < 5; i++ {
		if w := serve(p, pushRequest(body)); w.Code != http.StatusOK {
			t.Fatalf("push %d: %d %s", i, w.Code, w.Body)
		}
	}
	if got := b.Requests()[0] - before; got != 5 {
		t.Errorf("group b got %d of 5 pushes after group a's last endpoint was out, want 5", got)
	}
}

// TestPriorityLastEndpointKeptWhenLaterGroupsAreDown: the last endpoint in
// of a group is taken out for latency only when a later group can take the
// requests; with every later group down it stays in, as a single group's
// would, instead of the group going all out and half of the calls going to
// its endpoint that answers 503.
func TestPriorityLastEndpointKeptWhenLaterGroupsAreDown(t *testing.T) {
	a, b, ha, hb := latencyGroups(t)
	b.Servers[0].Stop()
	standin.WaitFor(t, 20*time.Second, "group b down", func() bool { return hb.Available() == 0 })
	p, err := NewPriority([]*Handler{ha, hb}, PriorityOptions{MinReady: 1})
	if err != nil {
		t.Fatal(err)
	}
	body := standin.RemoteWriteBody(10, 1)
	takeOut503(t, p, a, ha, body)
	a.Distributors[0].SetBehavior(standin.AnswerAfter(250 * time.Millisecond))
	serve(p, pushRequest(body)) // late
	a.Distributors[0].SetBehavior(nil)
	for i := range 10 {
		if w := serve(p, pushRequest(body)); w.Code != http.StatusOK {
			t.Fatalf("push %d with group a's last endpoint in and group b down: %d %s", i, w.Code, w.Body)
		}
	}
}

// latencyGroups starts group a (2 endpoints) and group b (1), with passive
// health that takes an endpoint out for a 503 or a call over 100 ms.
func latencyGroups(t *testing.T) (a, b *cluster, ha, hb *Handler) {
	a, b = startCluster(t, 2), startCluster(t, 1)
	health := Options{Retries: Ptr(0), FailDuration: time.Minute, MaxFails: 1,
		UnhealthyStatus: []int{503}, UnhealthyLatency: 100 * time.Millisecond}
	ha, hb = newHandler(t, a, health), newHandler(t, b, health)
	waitReady(t, ha, 2)
	waitReady(t, hb, 1)
	return a, b, ha, hb
}

// takeOut503 makes group a's second endpoint answer 503 until it is out.
func takeOut503(t *testing.T, p http.Handler, a *cluster, ha *Handler, body []byte) {
	t.Helper()
	a.Distributors[1].SetBehavior(standin.Answer503)
	standin.WaitFor(t, 10*time.Second, "the 503 endpoint of group a out", func() bool {
		serve(p, pushRequest(body))
		return ha.Available() == 1
	})
}
