package grpcpush

import (
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestEndpointSeriesFollowTheirUsers races one Handler dropping an endpoint
// against a newer Handler of the same backend taking it (a reload while DNS
// changes): the endpoint_healthy series must exist exactly while some
// Handler has the endpoint.
func TestEndpointSeriesFollowTheirUsers(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	const addr = "127.0.0.4:9095"
	// The window is a few instructions wide: with the race detector the old
	// code fails every run, without it about one run in three per 20,000.
	for i := 0; i < 100000; i++ {
		older, newer := m.forBackend("distributor", "t"), m.forBackend("distributor", "t")
		older.use(addr)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); older.forget(addr) }()
		go func() { defer wg.Done(); newer.use(addr) }()
		wg.Wait()
		if n := seriesCount(m.healthy); n != 1 {
			t.Fatalf("iteration %d: %d endpoint_healthy series while a Handler has the endpoint, want 1", i, n)
		}
		newer.forget(addr)
		if n := seriesCount(m.healthy); n != 0 {
			t.Fatalf("iteration %d: %d endpoint_healthy series after every Handler dropped the endpoint, want 0", i, n)
		}
	}
}

func seriesCount(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	n := 0
	for range ch {
		n++
	}
	return n
}

// TestTargetSeriesFollowTheirHandlers: the requests of a target that
// picked no endpoint ("none") keep their series while a Handler of the
// target is open, and lose them with the last one: a backend whose URL
// a reload changed leaves no series behind.
func TestTargetSeriesFollowTheirHandlers(t *testing.T) {
	m := NewMetrics()
	older, newer := m.forBackend("distributor", "dns:///old:9095"), m.forBackend("distributor", "dns:///old:9095")
	other := m.forBackend("distributor", "dns:///new:9095")
	for _, b := range []*backendMetrics{older, newer, other} {
		b.useTarget()
		b.m.requests.WithLabelValues(b.backend, b.target, noEndpoint, "401").Inc()
	}
	older.forgetTarget()
	if n := seriesCount(m.requests); n != 2 {
		t.Errorf("%d request series with a Handler of each target open, want 2", n)
	}
	newer.forgetTarget()
	if n := seriesCount(m.requests); n != 1 {
		t.Errorf("%d request series after the old target's last Handler closed, want 1 (the new target's)", n)
	}
}
