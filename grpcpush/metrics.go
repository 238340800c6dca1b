package grpcpush

import (
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Prometheus collectors of one or more Handlers (told apart by
// the "backend" label). Create them once with NewMetrics, register
// Collectors() wherever the caller keeps its metrics, and pass the same
// Metrics to every Handler.
type Metrics struct {
	requests   *prometheus.CounterVec   // backend, target, endpoint, code
	duration   *prometheus.HistogramVec // backend
	inFlight   *prometheus.GaugeVec     // backend
	ready      *prometheus.GaugeVec     // backend
	healthy    *prometheus.GaugeVec     // backend, endpoint
	buffered   *prometheus.GaugeVec     // backend
	bufferFull *prometheus.CounterVec   // backend

	// users counts the Handlers that have an endpoint, by backend and
	// address: Handlers of one backend name can overlap (a reload that
	// changed its settings), and an endpoint's series go only when the last
	// one drops it. healthOwner is the one Handler whose passive health
	// check writes the endpoint's endpoint_healthy series: the newest, which
	// takes the new requests, so that a draining Handler's view of the
	// endpoint does not overwrite it.
	mu          sync.Mutex
	users       map[[2]string]int
	healthOwner map[[2]string]*backendMetrics
}

// noEndpoint is the endpoint label of requests answered before any endpoint
// was picked (401, 413, no endpoint available, ...).
const noEndpoint = "none"

// NewMetrics creates the collectors (not registered).
func NewMetrics() *Metrics {
	byBackend := []string{"backend"}
	return &Metrics{
		users:       map[[2]string]int{},
		healthOwner: map[[2]string]*backendMetrics{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts(opts("requests_total",
			"Requests tunnelled over gRPC, by backend, target (priority group) and endpoint of the last attempt (\"none\" if no endpoint was picked) and HTTP status sent to the client.")),
			[]string{"backend", "target", "endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "metrics_gateway", Subsystem: "grpc", Name: "request_duration_seconds",
			Help:    "Time from receiving a request to having answered it, by backend.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, byBackend),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("requests_in_flight",
			"Requests being handled, by backend.")), byBackend),
		ready: prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("endpoints_ready",
			"Endpoints with a READY connection, by backend.")), byBackend),
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("endpoint_healthy",
			"1 while the passive health check keeps an endpoint in (always without passive health checks), 0 while it is out.")),
			[]string{"backend", "endpoint"}),
		buffered: prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("buffered_bytes",
			"Bytes of request body buffers held, by backend (bounded by max_buffered_bytes).")), byBackend),
		bufferFull: prometheus.NewCounterVec(prometheus.CounterOpts(opts("buffer_full_total",
			"Requests answered 503 because their body would have taken the backend's buffered bytes over max_buffered_bytes.")), byBackend),
	}
}

// opts names a metrics_gateway_grpc_* counter or gauge.
func opts(name, help string) prometheus.Opts {
	return prometheus.Opts{Namespace: "metrics_gateway", Subsystem: "grpc", Name: name, Help: help}
}

// Collectors returns the collectors to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.duration, m.inFlight, m.ready, m.healthy, m.buffered, m.bufferFull}
}

// backendMetrics are the children of one backend, looked up once so that the
// hot path does no label lookups. A nil *backendMetrics records nothing.
type backendMetrics struct {
	m        *Metrics
	backend  string
	target   string // of the Handler: the requests' target label
	duration prometheus.Observer
	inFlight prometheus.Gauge
	ready    prometheus.Gauge
}

func (m *Metrics) forBackend(backend, target string) *backendMetrics {
	if m == nil {
		return nil
	}
	return &backendMetrics{
		m:        m,
		backend:  backend,
		target:   target,
		duration: m.duration.WithLabelValues(backend),
		inFlight: m.inFlight.WithLabelValues(backend),
		ready:    m.ready.WithLabelValues(backend),
	}
}

// use records that a Handler has endpoint addr (in, as every new endpoint
// is). The newest Handler to use addr owns its endpoint_healthy series.
func (b *backendMetrics) use(addr string) {
	if b == nil {
		return
	}
	key := [2]string{b.backend, addr}
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	b.m.users[key]++
	b.m.healthOwner[key] = b
	b.m.healthy.WithLabelValues(b.backend, addr).Set(1)
}

// setHealthy records whether the passive health check has addr in, if this
// Handler owns the series or nobody does any more (the owner dropped addr
// while an older Handler still has it).
func (b *backendMetrics) setHealthy(addr string, in bool) {
	if b == nil {
		return
	}
	key := [2]string{b.backend, addr}
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	if owner, ok := b.m.healthOwner[key]; ok && owner != b {
		return
	}
	b.m.healthOwner[key] = b
	v := 0.0
	if in {
		v = 1
	}
	b.m.healthy.WithLabelValues(b.backend, addr).Set(v)
}

// forget records that a Handler dropped endpoint addr. When no Handler of
// the backend has it any more, its request series go, so that endpoint
// churn (pods replaced) does not grow the series without bound.
func (b *backendMetrics) forget(addr string) {
	if b == nil {
		return
	}
	key := [2]string{b.backend, addr}
	b.m.mu.Lock()
	defer b.m.mu.Unlock() // the deletes too: a Handler taking addr meanwhile must find its series kept
	b.m.users[key]--
	if b.m.healthOwner[key] == b {
		delete(b.m.healthOwner, key)
	}
	if b.m.users[key] > 0 {
		return
	}
	delete(b.m.users, key)
	b.m.requests.DeletePartialMatch(prometheus.Labels{"backend": b.backend, "endpoint": addr})
	b.m.healthy.DeleteLabelValues(b.backend, addr)
}

// targetKey is the users key of a backend's target: an address never
// holds a space.
func (b *backendMetrics) targetKey() [2]string { return [2]string{b.backend, "target " + b.target} }

// useTarget records that a Handler of the backend has its target.
func (b *backendMetrics) useTarget() {
	if b == nil {
		return
	}
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	b.m.users[b.targetKey()]++
}

// forgetTarget records that a Handler of the target closed. With the last
// one go the target's requests that picked no endpoint ("none"), so that
// the URLs a backend had before reloads do not keep series for ever.
func (b *backendMetrics) forgetTarget() {
	if b == nil {
		return
	}
	key := b.targetKey()
	b.m.mu.Lock()
	defer b.m.mu.Unlock()
	if b.m.users[key]--; b.m.users[key] > 0 {
		return
	}
	delete(b.m.users, key)
	b.m.requests.DeletePartialMatch(prometheus.Labels{"backend": b.backend, "target": b.target, "endpoint": noEndpoint})
}

// readyChanged adds delta (+1 or -1) to the backend's ready endpoints.
// Deltas rather than a count, so that overlapping Handlers of one backend
// add up instead of overwriting each other.
func (b *backendMetrics) readyChanged(delta float64) {
	if b != nil {
		b.ready.Add(delta)
	}
}

// codeCounters caches the request counter of each status code for one
// endpoint (lock-free after the first request with that code).
type codeCounters struct {
	c [600]atomic.Pointer[counterRef]
}

type counterRef struct{ prometheus.Counter }

// inc counts one request answered with code (100-599) on endpoint addr.
func (b *backendMetrics) inc(cc *codeCounters, addr string, code int) {
	if b == nil || code < 0 || code >= len(cc.c) {
		return
	}
	ref := cc.c[code].Load()
	if ref == nil {
		b.m.mu.Lock()
		if addr == noEndpoint && b.m.users[b.targetKey()] == 0 {
			// The target's last Handler closed (forgetTarget deleted
			// its series): a late request must not bring one back.
			b.m.mu.Unlock()
			return
		}
		ref = &counterRef{b.m.requests.WithLabelValues(b.backend, b.target, addr, strconv.Itoa(code))}
		b.m.mu.Unlock()
		cc.c[code].Store(ref)
	}
	ref.Inc()
}
