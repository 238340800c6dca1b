package grpcpush

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"

	"go.uber.org/zap"
	"google.golang.org/grpc/connectivity"
)

// Priority sends each request to the first of its groups that is serving:
// one with at least MinReady READY endpoints that the passive health check
// (when on) has in. Within a group the group's own balancer picks the
// endpoint. Groups are typically the distributors of one zone each, the
// gateway's own zone first.
//
// When no group has MinReady such endpoints, the first group with any is
// used; when none has any, the first group (its call waits for a
// connection within the timeout, or fails 503). A call that fails
// UNAVAILABLE once its group's retries are used up (every endpoint of the
// group tried or gone) is tried once more in each later group that has a
// READY endpoint, within the same timeout, before anything is written; with
// retries 0 nothing is retried.
//
// The Handlers stay owned by the caller: Priority neither creates nor
// closes them. What is the caller's and not the groups' (min_ready, the
// body budget, which group comes after which) lives in the Priority and
// travels with each request, so that Handlers shared between
// configurations never hold one configuration's settings.
type Priority struct {
	groups   []*Handler
	minReady int
	site     site // with the Tee
	untee    site // the same without it
	logger   *zap.Logger

	current atomic.Int32 // the group that served last, for the change log
}

// PriorityOptions configure a Priority.
type PriorityOptions struct {
	// MinReady is how many READY endpoints, in by the passive health
	// check, a group needs to serve (below 1: 1).
	MinReady int
	// Budget bounds the request body bytes the Priority's requests hold
	// at once; nil: the first group's own (Options.MaxBufferedBytes).
	Budget *Budget
	// Logger receives the changes of the serving group and the requests
	// that failed; nil: the groups' own loggers.
	Logger *zap.Logger
	// Tee gets every request its endpoint accepted (2xx), with its body,
	// once answered (mirrors).
	Tee Tee
}

// NewPriority makes a Priority over groups, in order.
func NewPriority(groups []*Handler, o PriorityOptions) (*Priority, error) {
	if len(groups) == 0 {
		return nil, errors.New("no groups")
	}
	p := &Priority{groups: groups, minReady: max(o.MinReady, 1), site: site{budget: o.Budget, logger: o.Logger, tee: o.Tee}, logger: o.Logger}
	if p.logger == nil {
		p.logger = groups[0].logger.Get()
	}
	if p.site.budget == nil {
		p.site.budget = groups[0].own.budget
	}
	p.untee = p.site
	p.untee.tee = nil
	return p, nil
}

// callFailsOver reports whether the call of ctx has a later group able to
// take its group's requests (one with an endpoint available) when none of
// its endpoints is in: then the group's last endpoint in may be taken out
// for latency too (latency.go). A later group that is down takes nothing.
func callFailsOver(ctx context.Context) bool {
	c, ok := ctx.Value(callKey{}).(*call)
	if !ok {
		return false
	}
	for _, g := range c.spill {
		if g.Available() > 0 {
			return true
		}
	}
	return false
}

// Current returns the index of the group a request would go to now.
func (p *Priority) Current() int {
	fallback := -1
	for i, g := range p.groups {
		n := g.Available()
		if n >= p.minReady {
			return i
		}
		if n > 0 && fallback < 0 {
			fallback = i
		}
	}
	return max(fallback, 0)
}

// ServeHTTP serves r like Handler.ServeHTTP, in the serving group.
func (p *Priority) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var e *Error
	if errors.As(p.Handle(w, r), &e) {
		e.Write(w, p.groups[0].s.retryAfter.Value(r))
	}
}

// Handle serves r like Handler.Handle, in the serving group; the Tee, if
// any, gets it once accepted.
func (p *Priority) Handle(w http.ResponseWriter, r *http.Request) error {
	return p.handle(w, r, &p.site)
}

// HandleWithoutTee serves r as Handle does, but the Tee does not get it:
// for the requests a Tee must not see (caddymodule mirrors writes only).
func (p *Priority) HandleWithoutTee(w http.ResponseWriter, r *http.Request) error {
	return p.handle(w, r, &p.untee)
}

func (p *Priority) handle(w http.ResponseWriter, r *http.Request, st *site) error {
	for _, g := range p.groups { // any of them may take the call
		g.active.enter()
	}
	defer func() {
		for _, g := range p.groups {
			g.active.leave()
		}
	}()
	if len(p.groups) == 1 { // one target: nothing to choose, no cost
		return p.groups[0].handle(w, r, nil, st)
	}
	i := p.Current()
	p.note(i)
	return p.groups[i].handle(w, r, p.groups[i+1:], st)
}

// note logs when the serving group changes.
func (p *Priority) note(i int) {
	if int(p.current.Load()) == i { // the common case: no write
		return
	}
	prev := int(p.current.Swap(int32(i)))
	if prev == i {
		return
	}
	p.logger.Info("serving group changed",
		zap.String("from", p.groups[prev].Target().String()),
		zap.String("to", p.groups[i].Target().String()),
		zap.Int("group", i+1), zap.Int("min_ready", p.minReady))
}

// Available returns the number of endpoints that can take a call now: READY
// and, with passive health checks, in. It reads no lock.
func (h *Handler) Available() int { return h.tracker.availableCount() }

// Unreachable reports whether h's connections are in TRANSIENT_FAILURE:
// the last attempt to every endpoint failed (refused, or no handshake
// within the connect timeout), or the name resolved to none, and none has
// been READY since. A call now would fail, and its retries would hold it
// through their backoff for nothing. Right after start (endpoints
// connecting) it is false. It reads no lock.
func (h *Handler) Unreachable() bool { return h.tracker.allFailing() }

// Unreachable reports whether the group that Send uses now is
// (Handler.Unreachable).
func (p *Priority) Unreachable() bool { return p.groups[p.Current()].Unreachable() }

// allFailing reports whether the child balancer's aggregate state is
// TRANSIENT_FAILURE.
func (t *tracker) allFailing() bool {
	return connectivity.State(t.state.Load()) == connectivity.TransientFailure
}

// maxCounted bounds the endpoints availableCount tells apart without
// allocating; beyond it, an endpoint with several SubConns may count twice.
const maxCounted = 32

// availableCount counts the distinct endpoints that are READY and in.
func (t *tracker) availableCount() int {
	var seen [maxCounted]*endpoint
	n := 0
	for _, ep := range *t.bySubConn.Load() {
		if connectivity.State(ep.state.Load()) != connectivity.Ready || ep.health.out.Load() {
			continue
		}
		dup := false
		for _, s := range seen[:min(n, maxCounted)] {
			if s == ep {
				dup = true
				break
			}
		}
		if !dup {
			if n < maxCounted {
				seen[n] = ep
			}
			n++
		}
	}
	return n
}
