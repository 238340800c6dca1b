package grpcpush

import (
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	zapobserver "go.uber.org/zap/zaptest/observer"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// TestCloseEndsALookupInFlight: a Handler closed while its DNS server has
// not answered a lookup leaves nothing behind: Go's resolver would wait for
// the answer until its own deadline, seconds after Close returned.
func TestCloseEndsALookupInFlight(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // reads queries, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	before := goleak.IgnoreCurrent()
	h, err := New(Options{Target: "dns://" + silent.LocalAddr().String() + "/distributor.mimir.test:9095"})
	if err != nil {
		t.Fatal(err)
	}
	_ = silent.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, _, err := silent.ReadFrom(make([]byte, 512)); err != nil {
		t.Fatalf("no lookup reached the DNS server: %v", err)
	}
	_ = h.Close()
	if err := goleak.Find(before); err != nil {
		t.Errorf("after Close, with a lookup unanswered: %v", err)
	}
}

// unresolvable runs a Handler whose target name does not exist (NXDOMAIN
// from a real DNS server) for window, and returns the lookups the server
// saw and the warnings logged.
func unresolvable(t *testing.T, refresh, window time.Duration) (lookups int64, warnings int) {
	t.Helper()
	dns, err := standin.StartDNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dns.Stop() })
	const name = "zone-c.distributor.mimir.test"
	core, logs := zapobserver.New(zapcore.DebugLevel)
	h, err := New(Options{Target: "dns://" + dns.Addr() + "/" + name + ":9095", Refresh: refresh, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	time.Sleep(window) // the scenario is this long; there is nothing to wait for
	lookups = dns.Lookups(name)
	for _, e := range logs.All() {
		if e.Level == zapcore.WarnLevel {
			t.Logf("warn: %s", e.Message)
			warnings++
		}
	}
	t.Logf("refresh %v, %v: %d lookups (%.2f/s), %d warnings, %d debug lines", refresh, window, lookups,
		float64(lookups)/window.Seconds(), warnings, logs.FilterLevelExact(zapcore.DebugLevel).Len())
	return lookups, warnings
}

// TestUnresolvableNameFastRefresh: a name that never resolves is looked up
// again no more often than refresh, however long it fails (the retry
// interval once doubled without bound, overflowed after 34 failures and
// then re-queried back to back), and the fault is logged at warn once: the
// failed lookup, and that the backend has no READY endpoint.
func TestUnresolvableNameFastRefresh(t *testing.T) {
	t.Parallel()
	const refresh, window = 10 * time.Millisecond, 3 * time.Second
	lookups, warnings := unresolvable(t, refresh, window)
	if max := int64(window/refresh) + 10; lookups > max {
		t.Errorf("%d lookups in %v, want at most %d (one per refresh)", lookups, window, max)
	}
	if warnings != 2 {
		t.Errorf("%d warnings, want 2 (each fault once a minute at most)", warnings)
	}
}

// TestUnresolvableNameForAMinute is the same at refresh 1s for 60 s: at
// most 2 lookups a second on average, and at most 4 warnings (2 faults,
// each once a minute at most).
func TestUnresolvableNameForAMinute(t *testing.T) {
	t.Parallel()
	const refresh, window = time.Second, 60 * time.Second
	lookups, warnings := unresolvable(t, refresh, window)
	if lookups > 2*60 || lookups < 30 {
		t.Errorf("%d lookups in %v, want 30 to 120", lookups, window)
	}
	if warnings < 2 || warnings > 4 {
		t.Errorf("%d warnings in %v, want 2 to 4", warnings, window)
	}
}
