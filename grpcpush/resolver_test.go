package grpcpush

import (
	"errors"
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

// unresolvableRun is a Handler whose target name does not exist (NXDOMAIN
// from a real DNS server), run for a while: the lookups the server saw and
// what was logged.
type unresolvableRun struct {
	refresh, window time.Duration
	stop            chan struct{} // closed to end the run early
	done            chan struct{} // closed when the run has ended
	err             error
	lookups         int64
	warnings        []string
	debugLines      int
}

// runUnresolvable starts such a run of window at refresh.
func runUnresolvable(refresh, window time.Duration) *unresolvableRun {
	r := &unresolvableRun{refresh: refresh, window: window, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = r.run()
	}()
	return r
}

func (r *unresolvableRun) run() error {
	dns, err := standin.StartDNS()
	if err != nil {
		return err
	}
	defer func() { _ = dns.Stop() }()
	const name = "zone-c.distributor.mimir.test"
	core, logs := zapobserver.New(zapcore.DebugLevel)
	h, err := New(Options{Target: "dns://" + dns.Addr() + "/" + name + ":9095", Refresh: r.refresh, Logger: zap.New(core)})
	if err != nil {
		return err
	}
	defer h.Close()
	select { // the scenario is this long; there is nothing to wait for
	case <-time.After(r.window):
	case <-r.stop:
		return errors.New("stopped early")
	}
	r.lookups = dns.Lookups(name)
	for _, e := range logs.All() {
		if e.Level == zapcore.WarnLevel {
			r.warnings = append(r.warnings, e.Message)
		}
	}
	r.debugLines = logs.FilterLevelExact(zapcore.DebugLevel).Len()
	return nil
}

// result waits for the run's end and returns its lookups and warnings.
func (r *unresolvableRun) result(t *testing.T) (lookups int64, warnings int) {
	t.Helper()
	<-r.done
	if r.err != nil {
		t.Fatal(r.err)
	}
	for _, w := range r.warnings {
		t.Logf("warn: %s", w)
	}
	t.Logf("refresh %v, %v: %d lookups (%.2f/s), %d warnings, %d debug lines", r.refresh, r.window, r.lookups,
		float64(r.lookups)/r.window.Seconds(), len(r.warnings), r.debugLines)
	return r.lookups, len(r.warnings)
}

// unresolvable runs an unresolvableRun within the test.
func unresolvable(t *testing.T, refresh, window time.Duration) (lookups int64, warnings int) {
	t.Helper()
	return runUnresolvable(refresh, window).result(t)
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
// each once a minute at most). The run starts with the package's tests
// (TestMain), so that its minute overlaps theirs.
func TestUnresolvableNameForAMinute(t *testing.T) {
	t.Parallel()
	lookups, warnings := aMinuteRun().result(t)
	if lookups > 2*60 || lookups < 30 {
		t.Errorf("%d lookups in a minute, want 30 to 120", lookups)
	}
	if warnings < 2 || warnings > 4 {
		t.Errorf("%d warnings in a minute, want 2 to 4", warnings)
	}
}
