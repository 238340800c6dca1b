package grpcpush

import (
	"sync/atomic"
	"time"
)

// The latency rule (UnhealthyLatency) judges an endpoint against its peers.
// A call slower than UnhealthyLatency is a failure of its endpoint only if
// the slowness was the endpoint's own:
//
//   - another endpoint answered, in time, a call that began after the slow
//     one began (it answered a whole call while this one kept the client
//     waiting): the endpoint is slower than its peers, the failure counts;
//   - no other endpoint had a call in flight or ending meanwhile (sparse
//     traffic, or a single endpoint): there is nothing to compare with, the
//     failure counts, as it would without peers;
//   - otherwise the others were busy too and none of them answered in time:
//     the slowness was everyone's. The gateway's own node paused (CPU
//     throttling of its pod, a GC, a descheduled process) or the network
//     did, and every call in flight ended late at once. That is not counted:
//     with max_fails at or below the calls in flight per endpoint, one such
//     pause would take a healthy endpoint out, and taking it out only loads
//     the others more.

// callTimes is what the latency rule compares of one endpoint, in
// nanoseconds on its healthMonitor's clock.
type callTimes struct {
	inFlight    atomic.Int32
	lastEnd     atomic.Int64 // when its latest call ended
	inTimeStart atomic.Int64 // when its latest call answered in time began
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
	storeMax(&c.lastEnd, m.clock(start.Add(took)))
	if answered && took <= m.cfg.latency {
		storeMax(&c.inTimeStart, m.clock(start))
	}
}

// slowOwnFault reports whether a call to ep that began at start and ended
// too late counts against ep (the rule above).
func (m *healthMonitor) slowOwnFault(ep *endpoint, start time.Time) bool {
	began := m.clock(start)
	peersBusy := false
	for _, other := range *m.t.bySubConn.Load() {
		if other == ep {
			continue
		}
		c := &other.health.calls
		if c.inTimeStart.Load() > began {
			return true
		}
		if c.inFlight.Load() > 0 || c.lastEnd.Load() > began {
			peersBusy = true
		}
	}
	return !peersBusy
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
