package grpcpush

import (
	"runtime"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// aMinuteUnresolvable is TestUnresolvableNameForAMinute's run, started
// before the tests: a minute of waiting that overlaps theirs.
var aMinuteUnresolvable *unresolvableRun

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
