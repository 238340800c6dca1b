package grpcpush

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/resolver"
)

// Resolution timing.
const (
	// lookupTimeout bounds one DNS lookup.
	lookupTimeout = 10 * time.Second
	// minResolveNowInterval rate-limits the re-resolutions gRPC asks for
	// (ResolveNow, e.g. when a connection fails) between periodic ones.
	minResolveNowInterval = time.Second
	// warnEvery is how often a lasting fault (failed lookups, no READY
	// endpoint) is logged at warn level at most; failed lookups in between
	// are logged at debug, so that a name that does not exist, or a DNS
	// server that fails every other time, cannot flood the log.
	warnEvery = time.Minute
)

// dnsBuilder builds the resolver of one Handler's ClientConn. It is passed
// with grpc.WithResolvers under the scheme "dns", so it replaces grpc-go's
// dns resolver for that ClientConn only (grpc-go's resolves again only after a
// failure and never sooner than every 30s, so new endpoints would idle).
type dnsBuilder struct {
	target  Target
	refresh time.Duration
	logger  *LoggerRef
	tracker *tracker
	lookup  func(ctx context.Context, host string) ([]netip.Addr, error)
}

// newDNSBuilder prepares resolution of t: through the system resolver, or
// through the DNS server named by the target's authority.
func newDNSBuilder(t Target, refresh time.Duration, logger *LoggerRef, tr *tracker) *dnsBuilder {
	var d net.Dialer
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, server string) (net.Conn, error) {
		if t.Authority != "" {
			server = t.Authority
		}
		c, err := d.DialContext(ctx, network, server)
		if err != nil {
			return nil, err
		}
		// Go's resolver ends a read by its deadline only: a lookup whose
		// caller left (a closing Handler) would wait for an answer that
		// may never come, seconds after Close returned.
		context.AfterFunc(ctx, func() { _ = c.Close() })
		return c, nil
	}}
	return &dnsBuilder{
		target:  t,
		refresh: refresh,
		logger:  logger,
		tracker: tr,
		lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return r.LookupNetIP(ctx, "ip", host)
		},
	}
}

func (b *dnsBuilder) Scheme() string { return "dns" }

// Build starts resolving. The target gRPC parsed is ignored: b already holds
// the one ParseTarget checked.
func (b *dnsBuilder) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &dnsResolver{
		b:      b,
		cc:     cc,
		ctx:    ctx,
		cancel: cancel,
		now:    make(chan struct{}, 1),
	}
	if ip, err := netip.ParseAddr(b.target.Host); err == nil {
		// A fixed address: report it once, there is nothing to refresh.
		r.update([]netip.Addr{ip})
		return r, nil
	}
	r.wg.Add(1)
	go r.loop()
	return r, nil
}

// dnsResolver re-resolves every refresh and on (rate-limited) ResolveNow.
type dnsResolver struct {
	b      *dnsBuilder
	cc     resolver.ClientConn
	ctx    context.Context
	cancel context.CancelFunc
	now    chan struct{}
	wg     sync.WaitGroup

	// Owned by the loop goroutine (or Build for fixed addresses).
	current   []string  // sorted ip:port of the last good answer
	good      bool      // a good answer was reported
	failures  int       // failed lookups since the last good one
	warned    time.Time // when a failure was last logged at warn
	warnedRun bool      // a failure since the last good lookup was
}

// ResolveNow asks for a resolution soon; extra requests are merged.
func (r *dnsResolver) ResolveNow(resolver.ResolveNowOptions) {
	select {
	case r.now <- struct{}{}:
	default:
	}
}

// Close stops the loop and waits for it.
func (r *dnsResolver) Close() {
	r.cancel()
	r.wg.Wait()
}

func (r *dnsResolver) loop() {
	defer r.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last, next time.Time // last resolution, next planned one
	retry := minResolveNowInterval
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-timer.C:
		case <-r.now:
			// Resolve now, or as soon as the rate limit allows.
			soon := last.Add(minResolveNowInterval)
			if soon.Before(next) {
				timer.Reset(time.Until(soon))
				next = soon
			}
			continue
		}
		last = time.Now()
		r.resolve()
		wait := r.b.refresh
		if !r.good { // no endpoints yet: try again sooner, backing off up to refresh
			wait = min(retry, wait)
			retry = min(2*retry, r.b.refresh)
		}
		next = time.Now().Add(wait)
		timer.Reset(wait)
	}
}

// resolve does one lookup and reports its outcome.
func (r *dnsResolver) resolve() {
	ctx, cancel := context.WithTimeout(r.ctx, lookupTimeout)
	defer cancel()
	ips, err := r.b.lookup(ctx, r.b.target.Host)
	if r.ctx.Err() != nil {
		return // closing
	}
	if err == nil && len(ips) == 0 {
		err = errors.New("no A or AAAA records")
	}
	if err != nil {
		r.fail(err)
		return
	}
	r.update(ips)
}

// fail keeps the last good endpoints, or reports the error before there
// were any, so that calls fail fast with UNAVAILABLE instead of hanging.
func (r *dnsResolver) fail(err error) {
	err = fmt.Errorf("resolving %s: %w", r.b.target.Host, err)
	r.failures++
	msg, fields := "DNS resolution failed, no endpoints yet", []zap.Field{
		zap.String("target", r.b.target.String()), zap.Int("failures", r.failures), zap.Error(err)}
	if r.good {
		msg, fields = "DNS resolution failed, keeping the last endpoints", append(fields, zap.Strings("endpoints", r.current))
	}
	r.logFailure(msg, fields)
	if !r.good {
		r.cc.ReportError(err)
	}
}

// logFailure logs a failure at warn level, one a warnEvery at
// most, and the others at debug.
func (r *dnsResolver) logFailure(msg string, fields []zap.Field) {
	if now := time.Now(); now.Sub(r.warned) >= warnEvery {
		r.warned, r.warnedRun = now, true
		r.b.logger.Get().Warn(msg, fields...)
		return
	}
	r.b.logger.Get().Debug(msg, fields...)
}

// update reports the endpoint set if it changed and logs the change.
func (r *dnsResolver) update(ips []netip.Addr) {
	addrs := make([]string, 0, len(ips))
	for _, ip := range ips {
		addrs = append(addrs, net.JoinHostPort(ip.Unmap().String(), r.b.target.Port))
	}
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)
	if r.warnedRun { // say that what the warning said is over
		r.b.logger.Get().Info("DNS resolution works again",
			zap.String("target", r.b.target.String()), zap.Int("failures", r.failures))
	}
	r.failures, r.warnedRun = 0, false
	if r.good && slices.Equal(addrs, r.current) {
		return
	}
	added, removed := diff(r.current, addrs)
	r.b.logger.Get().Info("endpoints changed",
		zap.String("target", r.b.target.String()), zap.Strings("added", added),
		zap.Strings("removed", removed), zap.Int("endpoints", len(addrs)))
	state := resolver.State{Endpoints: make([]resolver.Endpoint, len(addrs))}
	for i, a := range addrs {
		state.Endpoints[i] = resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}}
	}
	if err := r.cc.UpdateState(withTracker(state, r.b.tracker)); err != nil {
		r.b.logger.Get().Debug("endpoint update not accepted", zap.Error(err))
	}
	r.current, r.good = addrs, true
}

// diff returns what b adds to and removes from a (both sorted).
func diff(a, b []string) (added, removed []string) {
	for _, x := range b {
		if _, found := slices.BinarySearch(a, x); !found {
			added = append(added, x)
		}
	}
	for _, x := range a {
		if _, found := slices.BinarySearch(b, x); !found {
			removed = append(removed, x)
		}
	}
	return added, removed
}
