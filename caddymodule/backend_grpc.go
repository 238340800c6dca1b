package caddymodule

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
)

// grpcUpstreams holds one grpcpush.Handler (one gRPC ClientConn and its
// resolver) per distinct target and settings. A reload that keeps them
// gets the same Handler, so its connections survive the reload (also when
// only the order of a backend's targets or min_ready changed); the Handler
// closes when the last config using it is cleaned up.
var grpcUpstreams = caddy.NewUsagePool()

// grpcMetrics are the gRPC upstreams' collectors, shared by every config:
// Caddy makes a new metrics registry per config load, and each load
// registers these same collectors in it.
var grpcMetrics = grpcpush.NewMetrics()

// pooledHandler is a Handler in the usage pool. Destroying it closes the
// Handler once its in-flight requests are done, or after the request
// timeout, without holding up the reload: Caddy cleans up the old config of
// a reload while the old server may still be finishing requests.
type pooledHandler struct {
	*grpcpush.Handler
	drain time.Duration
	key   string // in grpcUpstreams
}

// Destruct implements caddy.Destructor.
func (p *pooledHandler) Destruct() error {
	p.CloseWhenIdle(p.drain)
	return nil
}

// grpcBackend is a backend served by the gRPC upstream: one pooled
// Handler per target, the priority groups in order.
type grpcBackend struct {
	name     Component
	target   string
	handlers []*pooledHandler
	priority *grpcpush.Priority // with the mirrors as its Tee
	budget   *grpcpush.Budget
	answer   func(http.ResponseWriter, *http.Request, int, string) error
}

// budgets holds one grpcpush.Budget per gRPC backend (component, URL and
// bound), shared like the Handlers, so that a reload does not start a
// second bound next to the one the old config's requests still fill.
var budgets = caddy.NewUsagePool()

// pooledBudget is a Budget in the usage pool; it has nothing to close.
type pooledBudget struct{ *grpcpush.Budget }

func (pooledBudget) Destruct() error { return nil }

// drainTime is how long a retired Handler waits for its requests.
func drainTime(timeout time.Duration) time.Duration {
	if timeout <= 0 {
		timeout = grpcpush.DefaultTimeout
	}
	return timeout + time.Second
}

func (g *Gateway) newGRPCBackend(ctx caddy.Context, c Component, b *Backend, u *ParsedURL) (upstream, error) {
	if err := registerCollectors(ctx, grpcMetrics.Collectors()...); err != nil {
		return nil, err
	}
	logger := g.logger.Named("grpc")
	gb := &grpcBackend{name: c, target: b.URL, answer: g.answerError}
	groups := make([]*grpcpush.Handler, 0, len(u.Targets))
	for _, target := range u.Targets {
		h, err := g.pooledGRPCHandler(grpcOptions(c, b, target, logger))
		if err != nil {
			return nil, err
		}
		gb.handlers = append(gb.handlers, h)
		groups = append(groups, h.Handler)
	}
	cfg := b.GRPC
	if cfg == nil {
		cfg = new(GRPCConfig)
	}
	var err error
	if gb.budget, err = g.pooledBudget(c, b.URL, cfg); err != nil {
		return nil, err
	}
	opts := grpcpush.PriorityOptions{
		MinReady: cfg.MinReady,
		Budget:   gb.budget,
		Logger:   logger.With(zap.String("backend", string(c))),
	}
	if len(g.tee) > 0 {
		opts.Tee = g.tee
	}
	gb.priority, err = grpcpush.NewPriority(groups, opts)
	return gb, err
}

// pooledBudget gets the Budget of a backend, creating it if no config has
// it yet, and records that this config holds it.
func (g *Gateway) pooledBudget(c Component, url string, cfg *GRPCConfig) (*grpcpush.Budget, error) {
	limit := cfg.MaxBufferedBytes
	if limit == 0 {
		limit = grpcpush.DefaultMaxBufferedBytes(cmp.Or(cfg.MaxRequestBody, grpcpush.DefaultMaxRequestBody))
	}
	// The targets in any order: a reload that only reorders the zones
	// keeps one bound for the old config's requests and the new one's.
	targets := strings.Fields(url)
	slices.Sort(targets)
	key := fmt.Sprintf("metrics_gateway.budget:%s|%s|%d", c, strings.Join(targets, " "), limit)
	val, _, err := budgets.LoadOrNew(key, func() (caddy.Destructor, error) {
		return pooledBudget{grpcpush.NewBudget(limit, grpcMetrics, string(c))}, nil
	})
	if err != nil {
		return nil, err
	}
	g.pooled = append(g.pooled, key)
	return val.(pooledBudget).Budget, nil
}

// pooledGRPCHandler gets the pooled Handler of opts, creating it if no
// config has it yet, and records that this config holds it.
func (g *Gateway) pooledGRPCHandler(opts grpcpush.Options) (*pooledHandler, error) {
	key, err := poolKey(opts)
	if err != nil {
		return nil, err
	}
	val, _, err := grpcUpstreams.LoadOrNew(key, func() (caddy.Destructor, error) {
		h, err := grpcpush.New(opts)
		if err != nil {
			return nil, err
		}
		return &pooledHandler{Handler: h, drain: drainTime(opts.Timeout), key: key}, nil
	})
	if err != nil {
		return nil, err
	}
	g.pooled = append(g.pooled, key)
	h := val.(*pooledHandler)
	// A Handler kept from an earlier config logs as the newest config
	// using it says, until that config is cleaned up (also when it fails
	// to load).
	g.released = append(g.released, h.UseLogger(opts.Logger))
	return h, nil
}

// grpcOptions turns a backend's JSON config into the grpcpush options of
// one of its targets; their rules are grpcpush's (Options.Validate, called
// by checkConfig).
func grpcOptions(c Component, b *Backend, target string, logger *zap.Logger) grpcpush.Options {
	cfg := b.GRPC
	if cfg == nil {
		cfg = new(GRPCConfig)
	}
	opts := grpcpush.Options{
		Target:           target,
		Refresh:          time.Duration(cfg.Refresh),
		Timeout:          time.Duration(cfg.Timeout),
		MaxRequestBody:   cfg.MaxRequestBody,
		MaxBufferedBytes: cfg.MaxBufferedBytes,
		MaxResponseBody:  cfg.MaxResponseBody,
		KeepaliveTime:    time.Duration(cfg.KeepaliveTime),
		KeepaliveTimeout: time.Duration(cfg.KeepaliveTimeout),
		Compression:      cfg.Compression,
		LBPolicy:         cfg.LBPolicy,
		FailDuration:     time.Duration(cfg.FailDuration),
		MaxFails:         cfg.MaxFails,
		UnhealthyStatus:  cfg.UnhealthyStatus,
		UnhealthyLatency: time.Duration(cfg.UnhealthyLatency),
		Logger:           logger, // the Handler adds the backend to every line
		Metrics:          grpcMetrics,
		BackendName:      string(c),
		OnDone:           logEndpoint,
		OnAnswer:         setEndpointPlaceholder,
		ReplaceHeaders:   forwardedHeaders,
	}
	if r := cfg.Retries; r != nil {
		opts.Retries = grpcpush.Ptr(*r)
	}
	if t := cfg.TLS; t != nil {
		opts.TLS = &grpcpush.TLSOptions{
			CAFile: t.CA, CertFile: t.Cert, KeyFile: t.Key,
			ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify,
		}
	}
	return opts
}

// poolKey identifies a gRPC upstream by everything that shapes it, after
// defaults are applied (so "grpc": null and "grpc": {} share one).
func poolKey(opts grpcpush.Options) (string, error) {
	key, err := opts.Key()
	return "metrics_gateway.grpc:" + key, err
}

// logEndpoint adds the gRPC endpoint that served a request to its access
// log entry.
func logEndpoint(r *http.Request, endpoint string, _ int) {
	if endpoint != "" {
		addLogFields(r, zap.String("metrics_gateway.endpoint", endpoint))
	}
}

// setEndpointPlaceholder sets {http.metrics_gateway.endpoint} before the
// answer is written, so that response header directives can use it.
func setEndpointPlaceholder(r *http.Request, endpoint string) {
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set(placeholderEndpoint, endpoint)
	}
}

func (g *grpcBackend) serve(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler, mirrored bool) error {
	var err error
	if mirrored {
		err = g.priority.Handle(w, r)
	} else {
		err = g.priority.HandleWithoutTee(w, r)
	}
	var e *grpcpush.Error
	if errors.As(err, &e) {
		return g.answer(w, r, e.Status, e.Msg)
	}
	return nil
}

// status lists every endpoint, and by group (target) which one serves.
func (g *grpcBackend) status() BackendStatus {
	st := BackendStatus{Component: g.name, Kind: KindGRPC, Target: g.target, Endpoints: []EndpointStatus{},
		BufferedBytes: g.budget.Used(), MaxBufferedBytes: g.budget.Limit()}
	current := g.priority.Current()
	for i, h := range g.handlers {
		grp := GroupStatus{Target: h.Target().String(), Serving: i == current, Ready: h.Available(),
			Endpoints: h.Endpoints()}
		st.Endpoints = append(st.Endpoints, grp.Endpoints...)
		st.Groups = append(st.Groups, grp)
	}
	return st
}

// releasePooled gives back this config's references to pooled gRPC
// upstreams, budgets and mirrors; the last reference closes one.
func releasePooled(keys []string) error {
	var errs []error
	for _, k := range keys {
		pool := grpcUpstreams
		switch {
		case strings.HasPrefix(k, "metrics_gateway.budget:"):
			pool = budgets
		case strings.HasPrefix(k, "metrics_gateway.mirror:"):
			pool = mirrors
		}
		if _, err := pool.Delete(k); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
