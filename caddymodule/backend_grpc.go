package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
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

// pooledHandler lets the usage pool close a Handler.
type pooledHandler struct{ *grpcpush.Handler }

func (p pooledHandler) Destruct() error { return p.Close() }

// grpcBackend is a backend served by the gRPC round-robin upstream.
type grpcBackend struct {
	name    Component
	target  string
	handler *grpcpush.Handler
}

func (g *Gateway) newGRPCBackend(ctx caddy.Context, c Component, b *Backend, _ *ParsedURL) (upstream, error) {
	opts, err := grpcOptions(c, b, g.logger.Named("grpc"))
	if err != nil {
		return nil, err
	}
	key, err := poolKey(c, b)
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
		return pooledHandler{h}, nil
	})
	if err != nil {
		return nil, err
	}
	g.pooled = append(g.pooled, key)
	return &grpcBackend{name: c, target: b.URL, handler: val.(pooledHandler).Handler}, nil
}

// grpcOptions turns a backend's JSON config into grpcpush options.
func grpcOptions(c Component, b *Backend, logger *zap.Logger) (grpcpush.Options, error) {
	cfg := b.GRPC
	if cfg == nil {
		cfg = new(GRPCConfig)
	}
	opts := grpcpush.Options{
		Target:           b.URL,
		Refresh:          time.Duration(cfg.Refresh),
		Timeout:          time.Duration(cfg.Timeout),
		MaxRequestBody:   cfg.MaxRequestBody,
		KeepaliveTime:    time.Duration(cfg.KeepaliveTime),
		KeepaliveTimeout: time.Duration(cfg.KeepaliveTimeout),
		Compression:      cfg.Compression,
		Logger:           logger.With(zap.String("backend", string(c))),
		Metrics:          grpcMetrics,
		BackendName:      string(c),
		OnDone:           logEndpoint,
	}
	switch {
	case cfg.Retries == -1:
		opts.Retries = grpcpush.Ptr(0)
	case cfg.Retries < -1:
		return opts, fmt.Errorf("grpc.retries: %d: must be -1 (no retries) or more", cfg.Retries)
	case cfg.Retries > 0:
		opts.Retries = grpcpush.Ptr(cfg.Retries)
	}
	if t := cfg.TLS; t != nil {
		if (t.Cert == "") != (t.Key == "") {
			return opts, fmt.Errorf("grpc.tls: cert and key go together")
		}
		opts.TLS = &grpcpush.TLSOptions{
			CAFile: t.CA, CertFile: t.Cert, KeyFile: t.Key,
			ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify,
		}
	}
	return opts, nil
}

// poolKey identifies a gRPC upstream by everything that shapes it.
func poolKey(c Component, b *Backend) (string, error) {
	key, err := json.Marshal(struct {
		Component Component   `json:"c"`
		URL       string      `json:"u"`
		GRPC      *GRPCConfig `json:"g"`
	}{c, b.URL, b.GRPC})
	return "metrics_gateway.grpc:" + string(key), err
}

// logEndpoint adds the gRPC endpoint that served a request to its access
// log entry.
func logEndpoint(r *http.Request, endpoint string, _ int) {
	if endpoint != "" {
		addLogFields(r, zap.String("metrics_gateway.endpoint", endpoint))
	}
}

func (g *grpcBackend) serve(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	g.handler.ServeHTTP(w, r)
	return nil
}

func (g *grpcBackend) status() BackendStatus {
	eps := g.handler.Endpoints()
	st := BackendStatus{Component: g.name, Kind: KindGRPC, Target: g.target, Endpoints: make([]EndpointStatus, len(eps))}
	for i, e := range eps {
		st.Endpoints[i] = EndpointStatus{Address: e.Address, State: e.State, Requests: e.Requests}
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
