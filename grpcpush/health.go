package grpcpush

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// Passive health checks, as in Caddy's reverse_proxy: every call's outcome
// is watched; an endpoint with MaxFails failures within FailDuration is out
// and gets no calls until enough of them are older than FailDuration.
//
// Taking an endpoint out goes through gRPC's own health signal: the
// endpoint's SubConn (wrapped here) reports TRANSIENT_FAILURE to its
// pick_first child while it is out, so round_robin and least_request leave
// it out of their pickers exactly as they do an endpoint whose health check
// failed, and keep balancing over the others; its connection stays up. This
// is how grpc-go's outlier detection ejects endpoints. If every READY
// endpoint is out, none is reported unhealthy: calls go to all of them.

// healthConfig is the validated passive health check.
type healthConfig struct {
	failDuration time.Duration
	maxFails     int
	statuses     []int // exact codes, or 1-5 for a class
	latency      time.Duration
	// fairShare is the least time after its pick a call must have had for
	// running out of it to count against the endpoint: half the timeout.
	fairShare time.Duration
}

// healthConfig returns the passive health check of o, nil when it is off.
func (o Options) healthConfig() *healthConfig {
	if o.FailDuration <= 0 {
		return nil
	}
	return &healthConfig{
		failDuration: o.FailDuration,
		maxFails:     cmp.Or(o.MaxFails, DefaultMaxFails),
		statuses:     slices.Clone(o.UnhealthyStatus),
		latency:      o.UnhealthyLatency,
	}
}

// checkHealth rejects passive health settings that cannot work.
func (o Options) checkHealth() []error {
	var errs []error
	if o.FailDuration < 0 {
		errs = append(errs, fmt.Errorf("fail_duration %v: must not be negative (0 turns passive health checks off)", o.FailDuration))
	}
	if o.MaxFails < 0 {
		errs = append(errs, fmt.Errorf("max_fails %d: must not be negative (0 means the default, 1)", o.MaxFails))
	}
	for _, c := range o.UnhealthyStatus {
		if !(c >= 1 && c <= 5) && !(c >= 100 && c <= 599) {
			errs = append(errs, fmt.Errorf("unhealthy_status %d: must be a status 100-599 or a class 1-5 (5 is 5xx)", c))
		}
	}
	if o.UnhealthyLatency < 0 {
		errs = append(errs, fmt.Errorf("unhealthy_latency %v: must not be negative", o.UnhealthyLatency))
	}
	if o.FailDuration == 0 && (o.MaxFails != 0 || len(o.UnhealthyStatus) > 0 || o.UnhealthyLatency != 0) {
		errs = append(errs, errors.New("max_fails, unhealthy_status, unhealthy_latency: need fail_duration (without it passive health checks are off)"))
	}
	return errs
}

// key describes h for Options.Key.
func (h *healthConfig) key() string {
	if h == nil {
		return "off"
	}
	return fmt.Sprintf("%v/%d/%v/%v", h.failDuration, h.maxFails, h.statuses, h.latency)
}

// statusCounts reports whether an HTTP status counts as a failure.
func (h *healthConfig) statusCounts(code int) bool {
	for _, c := range h.statuses {
		if c == code || (c < 10 && code/100 == c) {
			return true
		}
	}
	return false
}

// callEnd is what the passive health check knows of a call that ended.
type callEnd struct {
	err  error         // the call's error, nil when it succeeded
	took time.Duration // from the pick to the end
	// share is the time the call had after its pick: what was left of the
	// request's timeout once its body had arrived.
	share time.Duration
	// clientGone: the request's context was done when the call ended.
	clientGone bool
}

// failure says why a call counts as a failure of its endpoint, or "" if it
// does not; slow is true when the reason is only its latency (which
// latency.go judges against the other endpoints). answered is whether the
// component answered the call, with any status. What the endpoint could not
// help does not count: a call canceled because the client went away, or one
// that ran out of time because the upload had used up most of it (it had
// less than fairShare after its pick), unless it was late by the latency
// rule. A call canceled while the client was still there was canceled on
// the way (RST_STREAM CANCEL from the endpoint or a proxy in between): that
// counts.
func (h *healthConfig) failure(e callEnd) (why string, slow, answered bool) {
	answered = true
	if e.err != nil {
		switch c := status.Code(e.err); c {
		case codes.Canceled:
			if e.clientGone {
				return "", false, false
			}
			return "canceled on the way (the client was still there)", false, false
		case codes.DeadlineExceeded:
			if e.share < h.fairShare {
				return h.late(e.took), h.late(e.took) != "", false
			}
			return c.String(), false, false
		case codes.Unavailable:
			return c.String(), false, false
		}
		o := mapError(e.err)
		code := o.code
		if o.resp != nil {
			code = int(o.resp.Code)
		}
		answered = o.resp != nil
		if h.statusCounts(code) {
			return fmt.Sprintf("status %d", code), false, answered
		}
	}
	why = h.late(e.took)
	return why, why != "", answered
}

// late says why a call that took took is late by the latency rule, or "".
func (h *healthConfig) late(took time.Duration) string {
	if h.latency > 0 && took > h.latency {
		return fmt.Sprintf("took %v (unhealthy_latency %v)", took.Round(100*time.Microsecond), h.latency)
	}
	return ""
}

// endpointHealth is the passive health state of one endpoint.
type endpointHealth struct {
	out atomic.Bool // read by every pick

	mu    sync.Mutex
	fails []time.Time // the last maxFails failures, a ring
	next  int         // the oldest failure once the ring is full
	until time.Time   // out until then; zero while in
	last  string      // the last failure counted
	timer *time.Timer // brings the endpoint back at until
	gone  bool        // the endpoint left the set

	calls callTimes // for the latency rule
}

// stop cancels the endpoint's timer when it leaves the set.
func (e *endpointHealth) stop() {
	e.mu.Lock()
	e.gone = true
	if e.timer != nil {
		e.timer.Stop()
	}
	e.mu.Unlock()
}

// describe adds the health of the endpoint to its status.
func (e *endpointHealth) describe(st *EndpointStatus) {
	e.mu.Lock()
	defer e.mu.Unlock()
	st.LastFailure = e.last
	if !e.until.IsZero() {
		st.Healthy = false
		until := e.until
		st.UnhealthyUntil = &until
	}
}

// healthMonitor runs the passive health check of one Handler.
type healthMonitor struct {
	cfg    *healthConfig
	t      *tracker
	logger *LoggerRef
	epoch  time.Time // the zero of clock (latency.go)

	// kicks wakes the goroutine that reports health to the child balancer;
	// it is the only one that calls the child's health listeners, so they
	// see the changes in order.
	kicks chan struct{}
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

func newHealthMonitor(cfg *healthConfig, t *tracker, logger *LoggerRef) *healthMonitor {
	m := &healthMonitor{cfg: cfg, t: t, logger: logger, epoch: time.Now(),
		kicks: make(chan struct{}, 1), done: make(chan struct{})}
	m.wg.Add(1)
	go m.report()
	return m
}

// kick asks for the endpoints' health to be reported again (nil-safe).
func (m *healthMonitor) kick() {
	if m == nil {
		return
	}
	select {
	case m.kicks <- struct{}{}:
	default:
	}
}

// close stops the reporting goroutine (nil-safe, idempotent).
func (m *healthMonitor) close() {
	if m == nil {
		return
	}
	m.once.Do(func() { close(m.done) })
	m.wg.Wait()
}

// pick picks with the child picker, skipping an endpoint that is out but
// not yet left out by the child (the moment between a failure and the
// child's new picker), and watches how the call ends.
func (m *healthMonitor) pick(child balancer.Picker, t *tracker, info balancer.PickInfo) (balancer.PickResult, error) {
	res, ep, err := pickFor(child, t, info)
	if err != nil || res.SubConn == nil {
		return res, err
	}
	if w, ok := res.SubConn.(*healthSubConn); ok {
		res.SubConn = w.SubConn // gRPC wants its own SubConn back
	}
	if ep == nil {
		return res, nil
	}
	start := m.callStarted(ep)
	share := time.Duration(math.MaxInt64)
	if deadline, ok := info.Ctx.Deadline(); ok {
		share = deadline.Sub(start)
	}
	failsOver := callFailsOver(info.Ctx)
	childDone := res.Done
	res.Done = func(di balancer.DoneInfo) {
		if childDone != nil {
			childDone(di)
		}
		took := time.Since(start)
		if !di.BytesSent && status.Code(di.Err) != codes.DeadlineExceeded {
			// No stream was opened: the attempt never reached the
			// endpoint (its connection was draining after a GOAWAY, or
			// closing; or gRPC gave the pick back, its transport not
			// ready). Not the endpoint's failure, nor an answer in time:
			// its connection's state speaks for it. A call that waited
			// out its deadline for a stream (a hung endpoint's stream
			// quota full) is one.
			m.callEnded(ep, start, took, false)
			return
		}
		why, slow, answered := m.cfg.failure(callEnd{err: di.Err, took: took, share: share, clientGone: info.Ctx.Err() != nil})
		if slow && !m.lateCounts(ep, start, took, failsOver) {
			why = ""
		}
		m.callEnded(ep, start, took, answered)
		if why != "" {
			m.failed(ep, why)
		}
	}
	return res, nil
}

// answered counts a successful call whose HTTP status is unhealthy (the
// component answered it as an HTTPResponse, not as an error, so the pick's
// Done could not see it).
func (m *healthMonitor) answered(ep *endpoint, code int) {
	if ep != nil && m.cfg.statusCounts(code) {
		m.failed(ep, fmt.Sprintf("status %d", code))
	}
}

// maxSkips bounds the picks a call makes to get past endpoints that are out.
const maxSkips = 4

// avoid reports whether the pick number try of ep, for call c, is given
// back for another: an earlier attempt of the call went to ep (a retry goes
// to another endpoint if the policy offers one), or ep is out while another
// READY endpoint is in.
func avoid(c *call, ep *endpoint, t *tracker, try int) bool {
	if c != nil && try < maxRetrySkips && c.triedBefore(ep) {
		return true
	}
	return try < maxSkips && ep.health.out.Load() && !t.allOut()
}

// maxRetrySkips bounds the picks a retry makes to get past the endpoints its
// call already tried: least_conn, choosing at random, offers a refusing
// endpoint (which answers at once, so has the fewest calls) more often than
// not.
const maxRetrySkips = 16

// allOut reports whether no READY endpoint is in: then nothing is left out.
func (t *tracker) allOut() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.allOutLocked()
}

func (t *tracker) allOutLocked() bool {
	for _, ep := range t.byAddr {
		if connectivity.State(ep.state.Load()) == connectivity.Ready && !ep.health.out.Load() {
			return false
		}
	}
	return true
}

// failed counts one failure of ep; the maxFails-th within failDuration takes
// it out until the oldest of them is failDuration old.
func (m *healthMonitor) failed(ep *endpoint, why string) {
	now := time.Now()
	h := &ep.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gone {
		return
	}
	h.last = why
	if len(h.fails) < m.cfg.maxFails {
		h.fails = append(h.fails, now)
	} else {
		h.fails[h.next] = now
		h.next = (h.next + 1) % m.cfg.maxFails
	}
	if len(h.fails) < m.cfg.maxFails {
		return
	}
	until := h.fails[h.next].Add(m.cfg.failDuration)
	if !until.After(now) || !until.After(h.until) {
		return
	}
	wasOut := !h.until.IsZero()
	h.until = until
	if h.timer == nil {
		h.timer = time.AfterFunc(until.Sub(now), func() { m.maybeBack(ep) })
	} else {
		h.timer.Reset(until.Sub(now))
	}
	if wasOut {
		return
	}
	h.out.Store(true)
	m.t.metrics.setHealthy(ep.addr, false)
	m.logger.Get().Info("endpoint out: passive health check failed",
		zap.String("endpoint", ep.addr),
		zap.String("failure", why), zap.Int("failures", m.cfg.maxFails),
		zap.Duration("fail_duration", m.cfg.failDuration), zap.Time("until", until))
	m.kick()
}

// maybeBack brings ep back once its failures have aged out.
func (m *healthMonitor) maybeBack(ep *endpoint) {
	h := &ep.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gone || h.until.IsZero() {
		return
	}
	if wait := time.Until(h.until); wait > 0 {
		h.timer.Reset(wait)
		return
	}
	h.until = time.Time{}
	h.out.Store(false)
	m.t.metrics.setHealthy(ep.addr, true)
	m.logger.Get().Info("endpoint back: its failures aged out",
		zap.String("endpoint", ep.addr),
		zap.String("last_failure", h.last))
	m.kick()
}

// report delivers each SubConn's health to the child balancer whenever it
// is kicked: gRPC's own health state, or TRANSIENT_FAILURE for an endpoint
// that is out while another READY endpoint is in.
func (m *healthMonitor) report() {
	defer m.wg.Done()
	for {
		select {
		case <-m.done:
			return
		case <-m.kicks:
		}
		m.t.mu.Lock()
		allOut := m.t.allOutLocked()
		var ws []*healthSubConn
		for _, ep := range m.t.byAddr {
			ws = append(ws, ep.wrappers...)
		}
		m.t.mu.Unlock()
		for _, w := range ws {
			w.deliver(w.ep.health.out.Load() && !allOut)
		}
	}
}

// errOut is the connection error a SubConn of an endpoint that is out
// reports to its child balancer.
var errOut = errors.New("passive health check: endpoint is out")

// healthSubConn is a SubConn as the child balancer sees it with passive
// health checks: it relays gRPC's health updates to the child's health
// listener, through the monitor, and replaces them with TRANSIENT_FAILURE
// while its endpoint is out.
type healthSubConn struct {
	balancer.SubConn
	mon *healthMonitor
	ep  *endpoint // set by tracker.add, before any listener runs

	mu        sync.Mutex
	listener  func(balancer.SubConnState) // the child's
	seq       uint64                      // changes of listener or latest
	latest    *balancer.SubConnState      // gRPC's last health update
	sentSeq   uint64                      // what was delivered last
	sentOut   bool
	sentValid bool
}

// RegisterHealthListener is called by pick_first (under its lock) once the
// connection is READY.
func (w *healthSubConn) RegisterHealthListener(l func(balancer.SubConnState)) {
	w.mu.Lock()
	w.listener, w.latest = l, nil
	w.seq++
	seq := w.seq
	w.mu.Unlock()
	if l == nil {
		w.SubConn.RegisterHealthListener(nil)
		return
	}
	w.SubConn.RegisterHealthListener(func(s balancer.SubConnState) {
		w.mu.Lock()
		if w.seq != seq { // a listener registered since
			w.mu.Unlock()
			return
		}
		w.latest = &s
		w.seq++
		seq = w.seq
		w.mu.Unlock()
		w.mon.kick()
	})
}

// clearHealthListener forgets the child's listener and the last health
// update, until the child registers again on the next READY.
func (w *healthSubConn) clearHealthListener() {
	w.mu.Lock()
	w.listener, w.latest = nil, nil
	w.seq++
	w.mu.Unlock()
}

// deliver gives the child listener the SubConn's health, if it changed.
func (w *healthSubConn) deliver(out bool) {
	w.mu.Lock()
	l, latest, seq := w.listener, w.latest, w.seq
	if l == nil || latest == nil || (w.sentValid && w.sentSeq == seq && w.sentOut == out) {
		w.mu.Unlock()
		return
	}
	w.sentSeq, w.sentOut, w.sentValid = seq, out, true
	w.mu.Unlock()
	s := *latest
	if out && s.ConnectivityState == connectivity.Ready {
		s = balancer.SubConnState{ConnectivityState: connectivity.TransientFailure, ConnectionError: errOut}
	}
	l(s) // outside w.mu: pick_first takes its lock, which it holds when registering
}

// removeWrapper drops w from ws.
func removeWrapper(ws []*healthSubConn, w *healthSubConn) []*healthSubConn {
	if i := slices.Index(ws, w); i >= 0 {
		return slices.Delete(ws, i, i+1)
	}
	return ws
}
