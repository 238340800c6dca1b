package grpcpush

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc/connectivity"
)

// The latency rule (UnhealthyLatency) judges an endpoint against its peers.
// A call slower than UnhealthyLatency is overdue from the moment it has
// taken that long; it is a failure of its endpoint only if the slowness was
// the endpoint's own:
//
//   - another endpoint answered a call in time while this one was overdue:
//     the others kept up where this endpoint did not, the failure counts;
//   - no other endpoint had a call in flight or ending while it was overdue
//     (sparse traffic, or a single endpoint): there is nothing to compare
//     with, the failure counts, as it would without peers;
//   - otherwise the others were busy too and answered nothing in time: the
//     slowness was everyone's. The gateway's own node paused (CPU
//     throttling of its pod, a GC, a descheduled process) or the network
//     did, and every call in flight ended late at once. That is not counted:
//     with max_fails at or below the calls in flight per endpoint, one such
//     pause would take a healthy endpoint out, and taking it out only loads
//     the others more.
//
// Nor does a late call count while every other endpoint is out: taking the
// last endpoint in out as well would leave none in, and then nothing is left
// out (never all out), so the sick endpoints would get calls again. Seen as
// a cascade when distributors are loaded near their limit: the sick one is
// out, a healthy one's tail passes the threshold and it goes out too, the
// last one takes all the load, is late, and its failure puts every endpoint
// back in. Unless a later priority group takes over when none of this
// group's endpoints is in (NewPriority): then taking the last one out moves
// the requests to the next zone, which is what zones are for. Whether one
// does is the request's (callFailsOver): a Handler can be a later group's
// in one configuration and the last in another.
//
// And late calls of one endpoint that were in flight together are one
// failure: a late call counts only if it began after the last counted late
// call of its endpoint ended. A pause of one distributor (its GC, a
// noisy neighbour) delays every call in flight to it at once; that is one
// failure, not one per call, so max_fails means pauses, not calls in
// flight. An endpoint that stays slow still fails once per call time, and
// is out after max_fails of them.

// callTimes is what the latency rule compares of one endpoint, in
// nanoseconds on its healthMonitor's clock.
type callTimes struct {
	inFlight  atomic.Int32
	lastEnd   atomic.Int64 // when its latest call ended
	inTimeEnd atomic.Int64 // when its latest call answered in time ended
	lateEnd   atomic.Int64 // when its last counted late call ended
}

// clock returns t on the monitor's clock: monotonic, and above 0 for every
// call, so that 0 means "never".
func (m *healthMonitor) clock(t time.Time) int64 { return int64(t.Sub(m.epoch)) + 1 }

// callStarted records a call to ep that begins now and returns its start.
func (m *healthMonitor) callStarted(ep *endpoint) time.Time {
	if m.cfg.latency > 0 {
		ep.health.calls.inFlight.Add(1)
	}
	return time.Now()
}

// callEnded records the end of a call to ep that began at start and took
// took; answered is whether the component answered it (with any status).
func (m *healthMonitor) callEnded(ep *endpoint, start time.Time, took time.Duration, answered bool) {
	if m.cfg.latency <= 0 {
		return
	}
	c := &ep.health.calls
	c.inFlight.Add(-1)
	end := m.clock(start.Add(took))
	storeMax(&c.lastEnd, end)
	if answered && took <= m.cfg.latency {
		storeMax(&c.inTimeEnd, end)
	}
}

// lateCounts reports whether a call to ep that began at start and ended
// late, after took, counts as a failure (the rules above); it logs at debug
// why one does not.
func (m *healthMonitor) lateCounts(ep *endpoint, start time.Time, took time.Duration, failsOver bool) bool {
	var msg string
	switch {
	case !failsOver && m.lastIn(ep):
		msg = "late call not counted: every other endpoint is out"
	case !m.slowOwnFault(ep, start):
		msg = "late call not counted: the other endpoints were late too"
	case !ep.health.calls.firstLate(m.clock(start), m.clock(start.Add(took))):
		msg = "late call not counted: it was in flight with a late call already counted"
	default:
		return true
	}
	// Check first: without debug logging this costs nothing, however many
	// late calls a pause leaves.
	if ce := m.logger.Get().Check(zapcore.DebugLevel, msg); ce != nil {
		ce.Write(zap.String("endpoint", ep.addr), zap.Duration("took", took))
	}
	return false
}

// firstLate records a late call that began at began and ended at end, and
// reports whether it began after the last counted one ended.
func (c *callTimes) firstLate(began, end int64) bool {
	for {
		last := c.lateEnd.Load()
		if began <= last {
			return false
		}
		if c.lateEnd.CompareAndSwap(last, end) {
			return true
		}
	}
}

// slowOwnFault reports whether a call to ep that began at start and ended
// too late counts against ep (the first rule above: against its peers).
func (m *healthMonitor) slowOwnFault(ep *endpoint, start time.Time) bool {
	overdue := m.clock(start.Add(m.cfg.latency))
	peersBusy := false
	for _, other := range *m.t.bySubConn.Load() {
		if other == ep {
			continue
		}
		c := &other.health.calls
		if c.inTimeEnd.Load() > overdue {
			return true
		}
		if c.inFlight.Load() > 0 || c.lastEnd.Load() > overdue {
			peersBusy = true
		}
	}
	return !peersBusy
}

// lastIn reports whether ep is in and every other READY endpoint, of at
// least one, is out.
func (m *healthMonitor) lastIn(ep *endpoint) bool {
	if ep.health.out.Load() {
		return false
	}
	othersOut := false
	for _, other := range *m.t.bySubConn.Load() {
		if other == ep || connectivity.State(other.state.Load()) != connectivity.Ready {
			continue
		}
		if !other.health.out.Load() {
			return false
		}
		othersOut = true
	}
	return othersOut
}

// storeMax raises v to n unless it is already higher (calls end
// concurrently, in any order).
func storeMax(v *atomic.Int64, n int64) {
	for old := v.Load(); n > old; old = v.Load() {
		if v.CompareAndSwap(old, n) {
			return
		}
	}
}
