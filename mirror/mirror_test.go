package mirror

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// newHandler is a Handler for target, closed when tb's test or benchmark
// run ends.
func newHandler(tb testing.TB, target string) *grpcpush.Handler {
	tb.Helper()
	h, err := grpcpush.New(grpcpush.Options{Target: target})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = h.Close() })
	return h
}

// clusters starts a primary and a mirror cluster of dskit httpgrpc servers
// (one DNS server each) and returns a primary Priority that tees into a
// Mirror made with opts, sending to the mirror cluster.
func clusters(t *testing.T, nPrimary, nMirror int, opts Options) (primary *grpcpush.Priority, p, m *standin.Cluster, budget *grpcpush.Budget) {
	t.Helper()
	var err error
	if p, err = standin.StartCluster("primary.mimir.test", nPrimary); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	if m, err = standin.StartCluster("mirror.mimir.test", nMirror); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	for _, d := range append(append([]*standin.Distributor{}, p.Distributors...), m.Distributors...) {
		d.KeepRecords(10000)
	}
	ph, mh := newHandler(t, p.Target()), newHandler(t, m.Target())
	mirror, err := New(mh, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mirror.Close)
	budget = grpcpush.NewBudget(1<<30, nil, "")
	primary, err = grpcpush.NewPriority([]*grpcpush.Handler{ph}, grpcpush.PriorityOptions{Budget: budget, Tee: Set{mirror}})
	if err != nil {
		t.Fatal(err)
	}
	return primary, p, m, budget
}

func push(h http.Handler, tenant string, body []byte) int {
	r := httptest.NewRequest(http.MethodPost, standin.PushPath, bytes.NewReader(body))
	standin.SetPushHeaders(r.Header, tenant)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code
}

func counter(t *testing.T, m *Metrics, name, result string) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.requests.WithLabelValues(name, result).Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetCounter().GetValue()
}

// TestMirrorListedTenants: the listed tenants' pushes reach the mirror with
// the same body bytes, tenant and path; the others' never do; every push
// reaches the primary.
func TestMirrorListedTenants(t *testing.T) {
	metrics := NewMetrics()
	primary, p, m, budget := clusters(t, 3, 2, Options{Name: "new", Tenants: []string{"team-a", "team-b"}, Percent: DefaultPercent, Metrics: metrics})
	const pushes = 30
	sums := map[[32]byte]string{}
	for i := 0; i < pushes; i++ {
		for k, tenant := range []string{"team-a", "team-b", "team-c"} {
			body := standin.RemoteWriteBody(20+3*i+k, 1) // one body per push
			sums[sha256.Sum256(body)] = tenant
			if code := push(primary, tenant, body); code != http.StatusOK {
				t.Fatalf("push: %d", code)
			}
		}
	}
	standin.WaitFor(t, 20*time.Second, "the copies answered", func() bool {
		return counter(t, metrics, "new", ResultOK) == 2*pushes
	})
	var primaryPushes int
	for _, d := range p.Distributors {
		primaryPushes += int(d.Requests())
	}
	if primaryPushes != 3*pushes {
		t.Errorf("the primary got %d pushes, want %d", primaryPushes, 3*pushes)
	}
	seen := map[string]int{}
	for _, d := range m.Distributors {
		for _, rec := range d.Records() {
			tenant, known := sums[rec.BodySHA256]
			if !known || tenant != rec.Tenant || rec.URL != standin.PushPath {
				t.Errorf("the mirror got %s for %q, body known %v (tenant %q)", rec.URL, rec.Tenant, known, tenant)
			}
			seen[rec.Tenant]++
		}
	}
	if seen["team-a"] != pushes || seen["team-b"] != pushes || seen["team-c"] != 0 {
		t.Errorf("the mirror got %v, want %d of team-a and team-b and none of team-c", seen, pushes)
	}
	standin.WaitFor(t, 10*time.Second, "every body buffer given back", func() bool { return budget.Used() == 0 })
}

// TestMirrorPercentByTenant: percent 50 over 100 tenants mirrors between
// 30 and 70 of them, each with all of its pushes or none.
func TestMirrorPercentByTenant(t *testing.T) {
	metrics := NewMetrics()
	primary, _, m, _ := clusters(t, 1, 1, Options{Name: "half", Percent: 50, Metrics: metrics})
	body := standin.RemoteWriteBody(5, 1)
	for round := 0; round < 3; round++ {
		for i := 0; i < 100; i++ {
			if code := push(primary, fmt.Sprintf("tenant-%d", i), body); code != http.StatusOK {
				t.Fatalf("push: %d", code)
			}
		}
	}
	var mirrored int
	standin.WaitFor(t, 20*time.Second, "every copy answered", func() bool {
		mirrored = int(counter(t, metrics, "half", ResultOK))
		return mirrored > 0 && mirrored%3 == 0 && int(m.Distributors[0].Requests()) == mirrored && mirrored == countMirrored(m)
	})
	tenants, errs := m.Distributors[0].CheckWholeTenants(3, 30, 70)
	for _, err := range errs {
		t.Errorf("mirrored at percent 50: %v", err)
	}
	t.Logf("%d of 100 tenants mirrored", tenants)
}

func countMirrored(m *standin.Cluster) int {
	n := 0
	for _, d := range m.Distributors {
		n += len(d.Records())
	}
	return n
}

// TestMirrorHungOrDown: a mirror that hangs takes max_in_flight copies and
// drops the rest, each copy ending at its timeout; a mirror that refuses
// connections fails its copies. Neither delays nor fails the primary, and
// no body stays held.
func TestMirrorHungOrDown(t *testing.T) {
	metrics := NewMetrics()
	primary, _, m, budget := clusters(t, 1, 1, Options{Name: "sick", Percent: DefaultPercent, MaxInFlight: 4, Timeout: time.Second, Metrics: metrics})
	body := standin.RemoteWriteBody(100, 1)
	release := make(chan struct{})
	var held atomic.Int64
	m.Distributors[0].SetBehavior(standin.HoldUntil(release, &held))
	defer close(release)
	var wg sync.WaitGroup
	var slow atomic.Int64
	for i := 0; i < 20; i++ {
		wg.Go(func() {
			start := time.Now()
			if code := push(primary, "team-a", body); code != http.StatusOK {
				t.Errorf("push with a hung mirror: %d", code)
			}
			if time.Since(start) > 500*time.Millisecond {
				slow.Add(1)
			}
		})
	}
	wg.Wait()
	if n := slow.Load(); n > 0 {
		t.Errorf("%d pushes took over 500 ms with the mirror hung (copies time out after 1s)", n)
	}
	if dropped := counter(t, metrics, "sick", ResultDropped); dropped != 16 {
		t.Errorf("%v copies dropped, want 16 (20 pushes, 4 in flight at most)", dropped)
	}
	standin.WaitFor(t, 20*time.Second, "4 copies timed out", func() bool {
		return counter(t, metrics, "sick", ResultTimeout) == 4
	})
	standin.WaitFor(t, 10*time.Second, "every body buffer given back", func() bool { return budget.Used() == 0 })

	m.Stop()
	for i := 0; i < 10; i++ {
		if code := push(primary, "team-a", body); code != http.StatusOK {
			t.Errorf("push with the mirror down: %d", code)
		}
	}
	standin.WaitFor(t, 20*time.Second, "the copies to a mirror that is down counted", func() bool {
		return counter(t, metrics, "sick", ResultFailed)+counter(t, metrics, "sick", ResultDropped) == 16+10
	})
}

// TestMirrorUnreachable: once every endpoint of a mirror refuses
// connections, a copy is counted failed at once, without a call (nothing in
// flight, no body held through retries); before that, while the mirror is
// up or still connecting, copies are sent.
func TestMirrorUnreachable(t *testing.T) {
	cl, err := standin.StartCluster("down.mimir.test", 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Stop)
	h := newHandler(t, cl.Target())
	if h.Unreachable() {
		t.Fatal("unreachable before any connection attempt")
	}
	metrics := NewMetrics()
	m, err := New(h, Options{Name: "down", Percent: DefaultPercent, Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	budget := grpcpush.NewBudget(1<<30, nil, "")
	copyOne := func() {
		r := httptest.NewRequest(http.MethodPost, standin.PushPath, bytes.NewReader(standin.RemoteWriteBody(10, 1)))
		standin.SetPushHeaders(r.Header, "team-a")
		q, err := grpcpush.ReadRequest(r, 1<<20, budget, nil)
		if err != nil {
			t.Fatal(err)
		}
		m.Copy(q)
		q.Release()
	}
	copyOne()
	standin.WaitFor(t, 20*time.Second, "the copy to the mirror while it is up", func() bool { return counter(t, metrics, "down", ResultOK) == 1 })
	if h.Unreachable() {
		t.Fatal("unreachable while up")
	}

	cl.Stop()
	standin.WaitFor(t, 20*time.Second, "every endpoint refusing connections", h.Unreachable)
	// It stays so through the endpoints' reconnect attempts (each SubConn
	// goes back through IDLE and CONNECTING after its backoff): the
	// balancer's state, not the SubConns', is what counts.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if !h.Unreachable() {
			t.Fatal("reachable again while every endpoint refuses connections")
		}
	}
	for i := 0; i < 10; i++ {
		copyOne()
	}
	if n, inFlight := counter(t, metrics, "down", ResultFailed), m.InFlight(); n != 10 || inFlight != 0 {
		t.Errorf("right after 10 copies to a mirror that refuses connections: %v failed, %d in flight; want 10 failed at once, none in flight", n, inFlight)
	}
	if used := budget.Used(); used != 0 {
		t.Errorf("%d body bytes held by copies that were not sent", used)
	}
}

// TestMirrorCheck: bad options are refused naming the field.
func TestMirrorCheck(t *testing.T) {
	for _, o := range []Options{{Percent: 101}, {Percent: -1}, {MaxInFlight: -1}, {Timeout: -time.Second}} {
		if _, err := New(nil, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	var _ prometheus.Collector = NewMetrics().requests
}

// TestMirrorSelection: percent 0 mirrors nothing (a paused mirror); a
// tenant with dskit's ":key=value" suffix is the tenant without it.
func TestMirrorSelection(t *testing.T) {
	paused, err := New(nil, Options{Percent: 0})
	if err != nil {
		t.Fatal(err)
	}
	listed, err := New(nil, Options{Tenants: []string{"team-a"}, Percent: DefaultPercent})
	if err != nil {
		t.Fatal(err)
	}
	half, err := New(nil, Options{Percent: 50})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		tenant := fmt.Sprintf("tenant-%d", i)
		if paused.Mirrors(tenant) {
			t.Fatalf("percent 0 mirrors %s", tenant)
		}
		if half.Mirrors(tenant) != half.Mirrors(tenant+":src=ci") {
			t.Errorf("%s and %s:src=ci fall on different sides", tenant, tenant)
		}
	}
	if !listed.Mirrors("team-a:src=ci") || listed.Mirrors("team-b") {
		t.Error("the tenants list does not see team-a:src=ci as team-a")
	}
}

// TestMirrorLeavesTheBudgetToRequests: once the primary backend's buffered
// bytes are past half their bound, copies are dropped rather than keep
// bodies in it; a copy never carries the client's credentials.
func TestMirrorLeavesTheBudgetToRequests(t *testing.T) {
	metrics := NewMetrics()
	var got atomic.Pointer[grpcpush.Request]
	m, err := New(senderFunc(func(_ context.Context, q *grpcpush.Request) (int, error) {
		got.Store(q)
		return 200, nil
	}), Options{Name: "share", Percent: DefaultPercent, Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	read := func(budget *grpcpush.Budget, size int) *grpcpush.Request {
		r := httptest.NewRequest(http.MethodPost, standin.PushPath, bytes.NewReader(make([]byte, size)))
		standin.SetPushHeaders(r.Header, "team-a")
		r.Header.Set("Authorization", "Basic dGVhbS1hOnNlY3JldA==")
		r.Header.Set("Cookie", "session=1")
		q, err := grpcpush.ReadRequest(r, 1<<20, budget, nil)
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	small := read(grpcpush.NewBudget(1<<30, nil, ""), 100)
	m.Copy(small)
	small.Release()
	standin.WaitFor(t, 10*time.Second, "the copy", func() bool { return got.Load() != nil })
	for _, hd := range got.Load().Headers {
		if hd.Key == "Authorization" || hd.Key == "Cookie" {
			t.Errorf("the copy carries %s", hd.Key)
		}
	}
	full := read(grpcpush.NewBudget(3<<19, nil, ""), 600<<10) // its 1 MiB buffer is 2/3 of the bound
	m.Copy(full)
	full.Release()
	if n := counter(t, metrics, "share", ResultDropped); n != 1 {
		t.Errorf("%v copies dropped with the budget full, want 1", n)
	}
}

// offer offers m a copy of a small push of team-a, as a Priority does once
// its primary accepted it.
func offer(t *testing.T, m *Mirror) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, standin.PushPath, bytes.NewReader([]byte("body")))
	standin.SetPushHeaders(r.Header, "team-a")
	q, err := grpcpush.ReadRequest(r, 1<<20, grpcpush.NewBudget(1<<20, nil, ""), nil)
	if err != nil {
		t.Fatal(err)
	}
	m.Copy(q)
	q.Release()
}

type senderFunc func(ctx context.Context, q *grpcpush.Request) (int, error)

func (f senderFunc) Send(ctx context.Context, q *grpcpush.Request) (int, error) { return f(ctx, q) }

// TestMirrorRetire: a retired Mirror lets its copy in flight end by itself
// (a reload must not cancel the copy of a push acknowledged meanwhile),
// counts a later copy dropped, and calls back once the copy has ended,
// its series gone with it.
func TestMirrorRetire(t *testing.T) {
	metrics := NewMetrics()
	entered, answer := make(chan struct{}), make(chan struct{})
	var canceled atomic.Bool
	m, err := New(senderFunc(func(ctx context.Context, _ *grpcpush.Request) (int, error) {
		close(entered)
		<-answer
		canceled.Store(ctx.Err() != nil)
		return 200, nil
	}), Options{Name: "retired", Percent: DefaultPercent, Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	ok := metrics.requests.WithLabelValues("retired", ResultOK) // the Mirror's own counter
	offer(t, m)
	<-entered
	released := make(chan struct{})
	m.Retire(func() { close(released) })
	offer(t, m) // after the reload
	if n := counter(t, metrics, "retired", ResultDropped); n != 1 {
		t.Errorf("%v copies offered to the retired mirror counted dropped, want 1", n)
	}
	select {
	case <-released:
		t.Fatal("released while a copy was in flight")
	default:
	}
	close(answer)
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("not released after its copy ended")
	}
	if canceled.Load() || testutil.ToFloat64(ok) != 1 {
		t.Errorf("the copy in flight: canceled %v, ok %v; want it answered", canceled.Load(), testutil.ToFloat64(ok))
	}
	if n := testutil.CollectAndCount(metrics.requests) + testutil.CollectAndCount(metrics.inFlight); n != 0 {
		t.Errorf("%d series of the closed mirror left", n)
	}
}

// TestMirrorSeriesSharedByName: two Mirrors of one name (a reload that
// changed an option) share their series; they go with the last one.
func TestMirrorSeriesSharedByName(t *testing.T) {
	metrics := NewMetrics()
	var mirrors [2]*Mirror
	for i := range mirrors {
		m, err := New(senderFunc(func(context.Context, *grpcpush.Request) (int, error) { return 200, nil }),
			Options{Name: "dns:///m:9095", Percent: DefaultPercent, MaxInFlight: 1 + i, Metrics: metrics})
		if err != nil {
			t.Fatal(err)
		}
		mirrors[i] = m
	}
	mirrors[0].Close()
	if n := testutil.CollectAndCount(metrics.requests); n != 4 {
		t.Errorf("%d request series while the newer mirror is open, want 4 (one per result)", n)
	}
	mirrors[1].Close()
	if n := testutil.CollectAndCount(metrics.requests) + testutil.CollectAndCount(metrics.inFlight); n != 0 {
		t.Errorf("%d series after both closed", n)
	}
}
