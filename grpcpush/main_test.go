package grpcpush

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// aMinuteUnresolvable is TestUnresolvableNameForAMinute's run, started
// before the tests: a minute of waiting that overlaps theirs. The test's
// first run takes it; a repeated one (-count) makes its own.
var aMinuteUnresolvable *unresolvableRun

// aMinuteTaken is set by the first run of the test.
var aMinuteTaken atomic.Bool

// aMinuteRun returns the run for one execution of the test.
func aMinuteRun() *unresolvableRun {
	if aMinuteTaken.CompareAndSwap(false, true) {
		return aMinuteUnresolvable
	}
	return runUnresolvable(time.Second, time.Minute)
}

// Every test leaves no goroutine behind: Handlers, clusters and servers
// are stopped, and calls in flight end with them.
func TestMain(m *testing.M) {
	// TestUnresolvableNameForAMinute waits for its run in a slot of its
	// own: one more than the default, for the tests that work.
	standin.SetDefaultParallel(runtime.GOMAXPROCS(0) + 1)
	standin.TestMain(m, func() (after func()) {
		aMinuteUnresolvable = runUnresolvable(time.Second, time.Minute)
		return func() {
			close(aMinuteUnresolvable.stop) // when the test did not run
			<-aMinuteUnresolvable.done
		}
	})
}
