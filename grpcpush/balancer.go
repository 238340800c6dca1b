package grpcpush

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
)

// trackerKey is the resolver.State attribute through which a Handler's
// resolver hands its tracker to the balancer of the same ClientConn (the
// balancer registry is global, the tracker is per Handler).
type trackerKey struct{}

func withTracker(s resolver.State, t *tracker) resolver.State {
	s.Attributes = s.Attributes.WithValue(trackerKey{}, t)
	return s
}

func trackerFrom(a *attributes.Attributes) *tracker {
	t, _ := a.Value(trackerKey{}).(*tracker)
	return t
}

// EndpointStatus describes one endpoint for an admin view.
type EndpointStatus struct {
	// Address is ip:port.
	Address string `json:"address"`
	// State is the gRPC connectivity state: IDLE, CONNECTING, READY,
	// TRANSIENT_FAILURE (or SHUTDOWN while being removed).
	State string `json:"state"`
	// Requests counts the calls (attempts) sent to the endpoint.
	Requests uint64 `json:"requests"`
	// Healthy is false while the passive health check keeps the endpoint
	// out (always true without passive health checks).
	Healthy bool `json:"healthy"`
	// UnhealthyUntil is when an endpoint that is out comes back, unless it
	// fails again before.
	UnhealthyUntil *time.Time `json:"unhealthy_until,omitempty"`
	// LastFailure is the last failure the passive health check counted.
	LastFailure string `json:"last_failure,omitempty"`
}

// endpoint is the live record of one address.
type endpoint struct {
	addr     string
	state    atomic.Int32 // connectivity.State
	requests atomic.Uint64
	subConns int // guarded by tracker.mu
	counters codeCounters
	// wrappers are the endpoint's SubConns as its child balancer sees them,
	// with passive health checks (guarded by tracker.mu).
	wrappers []*healthSubConn
	health   endpointHealth
	// refs holds the endpoint's request series: one reference while it is
	// in the tracker, one per call whose last attempt went to it. The
	// series are deleted when the last reference goes, so that they live
	// as long as the endpoint or its in-flight calls, and no longer.
	refs atomic.Int64
}

// acquire takes a reference for a call; false once the endpoint's series
// are gone (a call that picks it in that instant is counted as "none").
func (ep *endpoint) acquire() bool {
	for {
		n := ep.refs.Load()
		if n <= 0 {
			return false
		}
		if ep.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// tracker holds the endpoints of one ClientConn.
type tracker struct {
	metrics *backendMetrics
	none    endpoint // for requests that never reached an endpoint
	// health is the passive health check; nil when it is off.
	health *healthMonitor

	mu     sync.Mutex
	byAddr map[string]*endpoint
	// bySubConn maps picked SubConns to endpoints. It is copied on write
	// (rare: connects, disconnects) so that Pick reads it without a lock.
	bySubConn atomic.Pointer[map[balancer.SubConn]*endpoint]
	connErr   atomic.Pointer[error] // the last failed connection attempt's
	// state is the child balancer's aggregate connectivity state. grpc-go's
	// balancers keep it in TRANSIENT_FAILURE, once there, until an endpoint
	// is READY again, while each SubConn goes back through IDLE and
	// CONNECTING on its own retries.
	state atomic.Int32
}

func newTracker(m *backendMetrics) *tracker {
	t := &tracker{metrics: m, byAddr: map[string]*endpoint{}}
	t.none.addr = noEndpoint
	empty := map[balancer.SubConn]*endpoint{}
	t.bySubConn.Store(&empty)
	return t
}

// add registers a new SubConn for addr.
func (t *tracker) add(sc balancer.SubConn, addr string) *endpoint {
	t.mu.Lock()
	defer t.mu.Unlock()
	ep := t.byAddr[addr]
	if ep == nil {
		ep = &endpoint{addr: addr}
		ep.state.Store(int32(connectivity.Idle))
		ep.refs.Store(1)
		t.byAddr[addr] = ep
		t.metrics.use(addr)
	}
	ep.subConns++
	if w, ok := sc.(*healthSubConn); ok {
		w.ep = ep
		ep.wrappers = append(ep.wrappers, w)
	}
	t.updateSubConnsLocked(func(m map[balancer.SubConn]*endpoint) { m[sc] = ep })
	return ep
}

// setState records a SubConn state change; Shutdown removes the SubConn, and
// the endpoint with its last SubConn.
func (t *tracker) setState(sc balancer.SubConn, ep *endpoint, s connectivity.State) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := connectivity.State(ep.state.Swap(int32(s)))
	if old == connectivity.Ready && s != connectivity.Ready {
		t.metrics.readyChanged(-1)
	} else if old != connectivity.Ready && s == connectivity.Ready {
		t.metrics.readyChanged(+1)
	}
	t.health.kick() // whether every endpoint is out may have changed
	if s != connectivity.Shutdown {
		return
	}
	t.updateSubConnsLocked(func(m map[balancer.SubConn]*endpoint) { delete(m, sc) })
	ep.subConns--
	if w, ok := sc.(*healthSubConn); ok {
		ep.wrappers = removeWrapper(ep.wrappers, w)
	}
	if ep.subConns == 0 && t.byAddr[ep.addr] == ep {
		delete(t.byAddr, ep.addr)
		ep.health.stop()
		t.release(ep)
	}
}

// release drops one reference to ep's series; the last one deletes them.
func (t *tracker) release(ep *endpoint) {
	if ep.refs.Add(-1) == 0 {
		t.metrics.forget(ep.addr)
	}
}

// closeAll drops every endpoint when the ClientConn closes: grpc-go does not
// report SubConn states after Close, so the endpoints leave the ready gauge
// and the request series here.
func (t *tracker) closeAll() {
	t.health.close() // first: its goroutine takes t.mu
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ep := range t.byAddr {
		if connectivity.State(ep.state.Swap(int32(connectivity.Shutdown))) == connectivity.Ready {
			t.metrics.readyChanged(-1)
		}
		ep.health.stop()
		t.release(ep)
	}
	clear(t.byAddr)
	t.updateSubConnsLocked(func(m map[balancer.SubConn]*endpoint) { clear(m) })
}

// updateSubConnsLocked replaces bySubConn with an edited copy.
func (t *tracker) updateSubConnsLocked(edit func(map[balancer.SubConn]*endpoint)) {
	old := *t.bySubConn.Load()
	m := make(map[balancer.SubConn]*endpoint, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	edit(m)
	t.bySubConn.Store(&m)
}

// statuses lists the current endpoints by address.
func (t *tracker) statuses() []EndpointStatus {
	t.mu.Lock()
	out := make([]EndpointStatus, 0, len(t.byAddr))
	for _, ep := range t.byAddr {
		st := EndpointStatus{
			Address:  ep.addr,
			State:    connectivity.State(ep.state.Load()).String(),
			Requests: ep.requests.Load(),
			Healthy:  true,
		}
		ep.health.describe(&st)
		out = append(out, st)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// observerBuilder builds a grpc-go balancer (child) behind an observing
// ClientConn; it is registered under name (see leastconn.go).
type observerBuilder struct {
	name, child string
	// childConfig is the child's JSON config; "" when it takes none.
	childConfig string
}

func (b observerBuilder) Name() string { return b.name }

func (b observerBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	occ := &observingCC{ClientConn: cc}
	cfg, err := b.parseChildConfig()
	return &observer{
		Balancer:    balancer.Get(b.child).Build(occ, opts),
		cc:          occ,
		childConfig: cfg,
		configErr:   err,
	}
}

// observer is the child balancer; it only picks up the tracker from the
// resolver state and hands the child its own config.
type observer struct {
	balancer.Balancer
	cc          *observingCC
	childConfig serviceconfig.LoadBalancingConfig
	configErr   error
}

func (b *observer) UpdateClientConnState(s balancer.ClientConnState) error {
	if b.configErr != nil {
		return b.configErr
	}
	if t := trackerFrom(s.ResolverState.Attributes); t != nil {
		b.cc.tracker.Store(t)
	}
	s.BalancerConfig = b.childConfig
	return b.Balancer.UpdateClientConnState(s)
}

// observingCC sits between the child balancer and gRPC: it wraps every
// SubConn's state listener and every picker, and passes everything else
// through. With passive health checks it also wraps the SubConns
// themselves, to report an endpoint that is out as unhealthy.
type observingCC struct {
	balancer.ClientConn
	tracker atomic.Pointer[tracker]
}

func (c *observingCC) NewSubConn(addrs []resolver.Address, opts balancer.NewSubConnOptions) (balancer.SubConn, error) {
	t := c.tracker.Load()
	if t == nil || len(addrs) == 0 {
		return c.ClientConn.NewSubConn(addrs, opts)
	}
	var sc balancer.SubConn
	var ep *endpoint
	ready := make(chan struct{})
	inner := opts.StateListener
	opts.StateListener = func(s balancer.SubConnState) {
		<-ready // the listener only runs after Connect, i.e. after registration
		t.setState(sc, ep, s.ConnectivityState)
		t.noteConnError(s.ConnectionError)
		if hs, ok := sc.(*healthSubConn); ok && s.ConnectivityState != connectivity.Ready {
			// The health seen on the connection that ended must not be
			// replayed to the child (as grpc-go's outlier detection
			// clears it too): it would call a reconnecting endpoint READY.
			hs.clearHealthListener()
		}
		if inner != nil {
			inner(s)
		}
	}
	sc, err := c.ClientConn.NewSubConn(addrs, opts)
	if err != nil {
		return nil, err
	}
	if t.health != nil {
		sc = &healthSubConn{SubConn: sc, mon: t.health}
	}
	ep = t.add(sc, addrs[0].Addr)
	close(ready)
	return sc, nil
}

func (c *observingCC) UpdateState(s balancer.State) {
	if t := c.tracker.Load(); t != nil {
		t.state.Store(int32(s.ConnectivityState))
		if s.Picker != nil {
			s.Picker = &countingPicker{Picker: s.Picker, t: t}
		}
	}
	c.ClientConn.UpdateState(s)
}

// countingPicker is the child's picker; it notes where each call went and,
// with passive health checks, watches how each call ends.
type countingPicker struct {
	balancer.Picker
	t *tracker
}

func (p *countingPicker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	if p.t.health != nil {
		return p.t.health.pick(p.Picker, p.t, info)
	}
	res, _, err := pickFor(p.Picker, p.t, info)
	return res, err
}

// pickFor picks with the child picker for the call of info, giving back
// (least_request counts picks) those avoid skips, and notes where the call
// went. It returns the pick and its endpoint (nil if unknown).
func pickFor(child balancer.Picker, t *tracker, info balancer.PickInfo) (balancer.PickResult, *endpoint, error) {
	c, _ := info.Ctx.Value(callKey{}).(*call)
	for try := 0; ; try++ {
		res, err := child.Pick(info)
		if err != nil || res.SubConn == nil {
			return res, nil, err
		}
		ep := (*t.bySubConn.Load())[res.SubConn]
		if ep == nil || !avoid(c, ep, t, try) {
			if ep != nil {
				ep.requests.Add(1)
				noteEndpoint(t, c, ep)
			}
			return res, ep, nil
		}
		if res.Done != nil {
			res.Done(balancer.DoneInfo{})
		}
	}
}

// noteEndpoint tells the call (nil for one not from ServeHTTP) which
// endpoint its attempt went to. The call holds a reference to the
// endpoint's series until it ends.
func noteEndpoint(t *tracker, c *call, ep *endpoint) {
	if c == nil {
		return
	}
	c.noteTried(ep)
	if ep.acquire() {
		// A retry moves the call's hold to the endpoint it tries now.
		if prev := c.endpoint.Swap(ep); prev != nil {
			t.release(prev)
		}
	}
}

// callKey is the context key under which ServeHTTP passes its call to Pick.
type callKey struct{}
