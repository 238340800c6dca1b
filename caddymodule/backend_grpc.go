package caddymodule

import (
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
)

// grpcUpstreams holds one grpcpush.Handler (one gRPC ClientConn and its
// resolver) per distinct backend config. A reload that keeps a backend's
// config gets the same Handler, so its connections survive the reload; the
// Handler closes when the last config using it is cleaned up.
var grpcUpstreams = caddy.NewUsagePool()

// grpcMetrics are the gRPC upstreams' collectors, shared by every config:
// Caddy makes a new metrics registry per config load, and each load
// registers these same collectors in it.
var grpcMetrics = grpcpush.NewMetrics()

// pooledHandler is a Handler in the usage pool. It counts the requests in
// flight so that closing it can wait for them: Caddy cleans up the old
// config of a reload while the old server may still be finishing requests.
type pooledHandler struct {
	*grpcpush.Handler
	inflight atomic.Int64
	// drain bounds the wait for in-flight requests: the request timeout.
	drain time.Duration
}

// Destruct closes the Handler once its in-flight requests are done, or
// after the request timeout, without holding up the reload.
func (p *pooledHandler) Destruct() error {
	go func() {
		deadline := time.Now().Add(p.drain)
		for p.inflight.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		_ = p.Close()
	}()
	return nil
}

// grpcBackend is a backend served by the gRPC round-robin upstream.
type grpcBackend struct {
	name    Component
	target  string
	handler *pooledHandler
}

// drainTime is how long a retired Handler waits for its requests.
func drainTime(timeout time.Duration) time.Duration {
	if timeout <= 0 {
		timeout = grpcpush.DefaultTimeout
	}
	return timeout + time.Second
}

func (g *Gateway) newGRPCBackend(ctx caddy.Context, c Component, b *Backend, _ *ParsedURL) (upstream, error) {
	opts := grpcOptions(c, b, g.logger.Named("grpc"))
	key, err := poolKey(opts)
	if err != nil {
		return nil, err
	}
	if err := registerCollectors(ctx, grpcMetrics.Collectors()...); err != nil {
		return nil, err
	}
	val, _, err := grpcUpstreams.LoadOrNew(key, func() (caddy.Destructor, error) {
		h, err := grpcpush.New(opts)
		if err != nil {
			return nil, err
		}
		return &pooledHandler{Handler: h, drain: drainTime(opts.Timeout)}, nil
	})
	if err != nil {
		return nil, err
	}
	g.pooled = append(g.pooled, key)
	h := val.(*pooledHandler)
	// A Handler kept from an earlier config logs as this config says.
	h.SetLogger(opts.Logger)
	return &grpcBackend{name: c, target: b.URL, handler: h}, nil
}

// grpcOptions turns a backend's JSON config into grpcpush options; their
// rules are grpcpush's (Options.Validate, called by checkConfig).
func grpcOptions(c Component, b *Backend, logger *zap.Logger) grpcpush.Options {
	cfg := b.GRPC
	if cfg == nil {
		cfg = new(GRPCConfig)
	}
	opts := grpcpush.Options{
		Target:           b.URL,
		Refresh:          time.Duration(cfg.Refresh),
		Timeout:          time.Duration(cfg.Timeout),
		MaxRequestBody:   cfg.MaxRequestBody,
		MaxResponseBody:  cfg.MaxResponseBody,
		KeepaliveTime:    time.Duration(cfg.KeepaliveTime),
		KeepaliveTimeout: time.Duration(cfg.KeepaliveTimeout),
		Compression:      cfg.Compression,
		LBPolicy:         cfg.LBPolicy,
		FailDuration:     time.Duration(cfg.FailDuration),
		MaxFails:         cfg.MaxFails,
		UnhealthyStatus:  cfg.UnhealthyStatus,
		UnhealthyLatency: time.Duration(cfg.UnhealthyLatency),
		Logger:           logger.With(zap.String("backend", string(c))),
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

func (g *grpcBackend) serve(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	g.handler.inflight.Add(1)
	defer g.handler.inflight.Add(-1)
	var e *grpcpush.Error
	if err := g.handler.Handle(w, r); errors.As(err, &e) {
		return gatewayError(w, r, e.Status, e.Msg)
	}
	return nil
}

func (g *grpcBackend) status() BackendStatus {
	eps := g.handler.Endpoints()
	st := BackendStatus{Component: g.name, Kind: KindGRPC, Target: g.target, Endpoints: make([]EndpointStatus, len(eps))}
	for i, e := range eps {
		st.Endpoints[i] = EndpointStatus{Address: e.Address, State: e.State, Requests: e.Requests,
			Healthy: e.Healthy, UnhealthyUntil: e.UnhealthyUntil, LastFailure: e.LastFailure}
	}
	return st
}

// releaseGRPCBackends gives back this config's references to pooled gRPC
// upstreams; the last reference closes one.
func releaseGRPCBackends(keys []string) error {
	var errs []error
	for _, k := range keys {
		if _, err := grpcUpstreams.Delete(k); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
