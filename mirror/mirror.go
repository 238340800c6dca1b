// Package mirror sends a copy of every write to a second cluster, without
// ever slowing or failing the first: the copy is handed to a goroutine of its
// own, bounded in number (MaxInFlight, beyond which copies are dropped,
// never queued), with its own deadline, and its outcome goes nowhere but
// the metrics and the log. It knows HTTP and gRPC only (no Caddy); a Sender
// does the sending (grpcpush.Handler.Send for dns: mirrors, Caddy's
// reverse_proxy transport for HTTP ones).
//
// A copy carries the request's own body buffer (grpcpush.Request.Keep), not
// a second one, so a mirror holds at most MaxInFlight bodies: its memory is
// bounded by MaxInFlight × the largest body, and counts against the
// buffered-bytes bound of the backend that read the body.
package mirror

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	dskittenant "github.com/grafana/dskit/tenant"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
)

// Defaults of Options.
const (
	DefaultPercent     = 100
	DefaultMaxInFlight = 256
	DefaultTimeout     = 10 * time.Second
)

// maxBufferedShare is the share of the primary backend's max_buffered_bytes
// past which copies are dropped rather than keep bodies in it.
const maxBufferedShare = 0.5

// warnEvery is how often a mirror that drops or loses copies says so at
// warn level at most; every drop and failure is logged at debug.
const warnEvery = time.Minute

// Results of a copy, the values of the "result" label.
const (
	ResultOK      = "ok"      // the mirror answered 2xx
	ResultFailed  = "failed"  // it answered another status, or the call failed
	ResultDropped = "dropped" // MaxInFlight copies were in flight already
	ResultTimeout = "timeout" // no answer within Timeout
)

// Sender sends a kept request to the mirror cluster and returns the status
// it answered, or the error of the call.
type Sender interface {
	Send(ctx context.Context, q *grpcpush.Request) (int, error)
}

// reachability is a Sender that can tell that no endpoint of the mirror
// accepts connections now (grpcpush.Handler and Priority can).
type reachability interface {
	Unreachable() bool
}

// Options configure a Mirror. The zero value of each field is its default.
type Options struct {
	// Name labels the metrics and the log lines (the mirror's URL).
	Name string
	// Tenants are the only tenants mirrored; empty: all.
	Tenants []string
	// Percent is the share of tenants mirrored, 0-100, picked by a hash of
	// the tenant: a tenant is mirrored whole or not at all. 0 mirrors
	// nothing (a paused mirror); use DefaultPercent for all.
	Percent int
	// MaxInFlight bounds the copies in flight; one more is dropped.
	// Default 256.
	MaxInFlight int
	// Timeout bounds each copy. Default 10s.
	Timeout time.Duration
	// Logger receives drops and failures (debug; warn once a minute).
	Logger *zap.Logger
	// Metrics, when set, counts the copies.
	Metrics *Metrics
}

// Check rejects values that cannot work; errors name the field.
func (o Options) Check() error {
	var errs []error
	if o.Percent < 0 || o.Percent > 100 {
		errs = append(errs, fmt.Errorf("percent %d: must be 0 to 100", o.Percent))
	}
	if o.MaxInFlight < 0 {
		errs = append(errs, fmt.Errorf("max_in_flight %d: must not be negative (0 means the default, %d)", o.MaxInFlight, DefaultMaxInFlight))
	}
	if o.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout %v: must be positive", o.Timeout))
	}
	return errors.Join(errs...)
}

// Mirror copies requests to one Sender. It is a grpcpush.Tee.
type Mirror struct {
	sender  Sender
	reach   reachability // sender, if it can tell; else nil
	name    string
	tenants []string // sorted; empty: all
	percent int
	timeout time.Duration
	slots   chan struct{} // one per copy in flight
	logger  *grpcpush.LoggerRef
	counts  [4]prometheus.Counter // by result; nil without Metrics
	gauge   prometheus.Gauge
	metrics *Metrics
	forget  sync.Once // the series, once the mirror is closed

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	mu     sync.Mutex // orders Copy's wg.Add before Close's Wait
	closed bool
	wg     sync.WaitGroup

	problems atomic.Int64 // drops and failures since the last warning
	warned   atomic.Int64 // unix nanoseconds of the last warning
}

// New makes a Mirror sending to s.
func New(s Sender, o Options) (*Mirror, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Mirror{
		sender:  s,
		name:    o.Name,
		tenants: slices.Sorted(slices.Values(o.Tenants)),
		percent: o.Percent,
		timeout: cmp.Or(o.Timeout, DefaultTimeout),
		slots:   make(chan struct{}, cmp.Or(o.MaxInFlight, DefaultMaxInFlight)),
		logger:  grpcpush.NewLoggerRef(o.Logger, zap.String("mirror", o.Name)),
		ctx:     ctx,
		cancel:  cancel,
	}
	if r, ok := s.(reachability); ok {
		m.reach = r
	}
	if o.Metrics != nil {
		m.metrics = o.Metrics
		o.Metrics.use(m.name)
		for i, r := range results {
			m.counts[i] = o.Metrics.requests.WithLabelValues(m.name, r)
		}
		m.gauge = o.Metrics.inFlight.WithLabelValues(m.name)
	}
	return m, nil
}

// A result's index in results and Mirror.counts.
const (
	resultOK = iota
	resultFailed
	resultDropped
	resultTimeout
)

var results = [4]string{resultOK: ResultOK, resultFailed: ResultFailed, resultDropped: ResultDropped, resultTimeout: ResultTimeout}

// UseLogger makes l the mirror's logger until release is called: a mirror
// kept across reloads logs through the newest configuration using it.
func (m *Mirror) UseLogger(l *zap.Logger) (release func()) { return m.logger.Use(l) }

// Mirrors reports whether requests of tenant are mirrored: it is listed
// (or no list is given) and falls in Percent by its hash. dskit's
// ":key=value" metadata suffix is not part of the tenant.
func (m *Mirror) Mirrors(tenant string) bool {
	tenant = dskittenant.TrimMetadata(tenant)
	if len(m.tenants) > 0 {
		if _, ok := slices.BinarySearch(m.tenants, tenant); !ok {
			return false
		}
	}
	return m.percent >= 100 || bucket(tenant) < m.percent
}

// bucket places a tenant in 0-99, the same on every gateway and restart.
func bucket(tenant string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(tenant))
	return int(h.Sum32() % 100)
}

// Copy sends a copy of q if its tenant is mirrored and a slot is free, else
// drops it; it never waits.
func (m *Mirror) Copy(q *grpcpush.Request) {
	if !m.Mirrors(q.Tenant) {
		return
	}
	if m.reach != nil && m.reach.Unreachable() {
		// A down mirror costs a counter, not a call, its retries and a body
		// held through their backoff.
		m.done(resultFailed, func() error { return errUnreachable })
		return
	}
	if share := q.BufferedShare(); share > maxBufferedShare {
		// The copies must not take from the requests themselves: past half
		// of the backend's max_buffered_bytes, they are dropped.
		m.done(resultDropped, func() error {
			return fmt.Errorf("the backend holds %.0f%% of its max_buffered_bytes", 100*share)
		})
		return
	}
	select {
	case m.slots <- struct{}{}:
	default:
		m.done(resultDropped, func() error { return fmt.Errorf("%d copies in flight (max_in_flight)", cap(m.slots)) })
		return
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		<-m.slots
		m.done(resultDropped, func() error { return errRetired })
		return
	}
	m.wg.Add(1)
	m.mu.Unlock()
	if m.gauge != nil {
		m.gauge.Inc()
	}
	go m.send(q.Keep())
}

// errRetired is why a copy offered to a closed or retired Mirror is
// dropped: a configuration reload replaced it.
var errRetired = errors.New("the mirror was closed, replaced by a configuration reload")

// errUnreachable is the failure of a copy not sent because the last
// connection attempt to every endpoint of the mirror failed.
var errUnreachable = errors.New("no endpoint of the mirror accepts connections (the copy was not sent)")

// send makes one copy's call and counts its outcome.
func (m *Mirror) send(q *grpcpush.Request) {
	defer func() {
		q.Release()
		if m.gauge != nil {
			m.gauge.Dec()
		}
		<-m.slots
		m.wg.Done()
	}()
	ctx, cancel := context.WithTimeout(m.ctx, m.timeout)
	defer cancel()
	code, err := m.sender.Send(ctx, q)
	switch {
	case err == nil && code >= 200 && code < 300:
		m.done(resultOK, nil)
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded:
		m.done(resultTimeout, func() error { return fmt.Errorf("no answer within %v", m.timeout) })
	case err != nil:
		m.done(resultFailed, func() error { return err })
	default:
		m.done(resultFailed, func() error { return fmt.Errorf("status %d %s", code, http.StatusText(code)) })
	}
}

// debugLines are the debug messages of a copy's problems, by result.
var debugLines = [4]string{resultFailed: "mirror copy failed", resultDropped: "mirror copy dropped", resultTimeout: "mirror copy timed out"}

// done counts a copy's result and logs a problem (reason non-nil): at
// debug every time, at warn once a warnEvery at most. reason is called
// only for a line written: drops come in floods when the gateway is busy.
func (m *Mirror) done(result int, reason func() error) {
	if c := m.counts[result]; c != nil {
		c.Inc()
	}
	if reason == nil {
		return
	}
	m.problems.Add(1)
	now := time.Now().UnixNano()
	last := m.warned.Load()
	logger := m.logger.Get()
	if now-last >= int64(warnEvery) && m.warned.CompareAndSwap(last, now) {
		n := m.problems.Swap(0) // with those counted by others meanwhile
		logger.Warn("mirror copies dropped or failed; the primary is not affected",
			zap.String("result", results[result]), zap.Error(reason()), zap.Int64("since_last_warning", n))
		return
	}
	if ce := logger.Check(zap.DebugLevel, debugLines[result]); ce != nil {
		ce.Write(zap.Error(reason()))
	}
}

// InFlight returns the copies in flight.
func (m *Mirror) InFlight() int { return len(m.slots) }

// Close cancels the copies in flight, waits for them, and makes later
// copies dropped.
func (m *Mirror) Close() {
	m.stop()
	m.cancel()
	m.wg.Wait()
	m.forgetSeries()
}

// Retire makes later copies dropped and returns at once; once the copies
// in flight have ended by themselves (each within Timeout), it releases
// what Close does and calls then. A copy offered while the request it
// copies was still in flight at a reload must not be canceled by it.
func (m *Mirror) Retire(then func()) {
	m.stop()
	go func() {
		m.wg.Wait()
		m.cancel()
		m.forgetSeries()
		then()
	}()
}

// forgetSeries drops the mirror's series unless another Mirror of the same
// name uses them (the one a reload that changed an option made).
func (m *Mirror) forgetSeries() {
	if m.metrics != nil {
		m.forget.Do(func() { m.metrics.forget(m.name) })
	}
}

// stop makes later copies dropped.
func (m *Mirror) stop() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
}

// Set is several Mirrors; each request goes to each of them.
type Set []*Mirror

// Mirrors reports whether a mirror of s takes requests of tenant: a write
// no mirror takes need not be held for a copy.
func (s Set) Mirrors(tenant string) bool {
	for _, m := range s {
		if m.Mirrors(tenant) {
			return true
		}
	}
	return false
}

// Copy implements grpcpush.Tee.
func (s Set) Copy(q *grpcpush.Request) {
	for _, m := range s {
		m.Copy(q)
	}
}

// Metrics are the mirrors' collectors; register Collectors() once.
type Metrics struct {
	requests *prometheus.CounterVec
	inFlight *prometheus.GaugeVec

	mu    sync.Mutex
	users map[string]int // open Mirrors by name
}

// use records a Mirror of name.
func (m *Metrics) use(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.users[name]++
}

// forget records that a Mirror of name closed; with the last one its
// series go, so that the mirrors a reload removed leave none behind.
func (m *Metrics) forget(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.users[name]--; m.users[name] > 0 {
		return
	}
	delete(m.users, name)
	m.requests.DeletePartialMatch(prometheus.Labels{"mirror": name})
	m.inFlight.DeleteLabelValues(name)
}

// NewMetrics creates the collectors (not registered).
func NewMetrics() *Metrics {
	return &Metrics{
		users: map[string]int{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "metrics_gateway_mirror_requests_total",
			Help: "Copies of requests sent to a mirror, by mirror and result (ok, failed, dropped, timeout).",
		}, []string{"mirror", "result"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "metrics_gateway_mirror_in_flight",
			Help: "Copies of requests in flight to a mirror (at most its max_in_flight).",
		}, []string{"mirror"}),
	}
}

// Collectors returns the collectors to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.inFlight}
}

// Interface guards.
var (
	_ grpcpush.Tee = (*Mirror)(nil)
	_ grpcpush.Tee = Set(nil)
)
