package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/metrics-gateway/metrics_gateway/access"
	"github.com/metrics-gateway/metrics_gateway/grpcpush"
	"github.com/metrics-gateway/metrics_gateway/mirror"
	"github.com/metrics-gateway/metrics_gateway/orgid"
)

// MirrorConfig sends a copy of every write to another cluster: the pushes
// the route table sends to the distributor (Remote-Write 1.0 and 2.0,
// Influx, OTLP, Cortex's legacy push) and Graphite writes, after the tenant
// and access checks; nothing else. The client's answer is the primary's,
// at the primary's speed: a mirror that is down, slow or failing changes
// neither. A copy carries the request's own body buffer (no second one on
// the gRPC path); it holds it until its call ends, so a mirror holds at
// most max_in_flight bodies, counted against the primary backend's
// max_buffered_bytes.
type MirrorConfig struct {
	// URL is the mirror: one or more `dns:` targets (priority groups, as a
	// backend's; every option of a `dns:` backend applies but
	// max_buffered_bytes, which is the primary's), or one or more
	// `http://`/`https://` URLs, sent through Caddy's reverse_proxy HTTP
	// transport (round robin). Required.
	URL []string `json:"url"`

	// Tenants are the only tenants mirrored. Default: all.
	Tenants []string `json:"tenants,omitempty"`

	// Percent is the share of tenants mirrored, 0-100, chosen by a hash of
	// the tenant: a tenant is mirrored whole or not at all, the same on
	// every gateway. 0 pauses the mirror. Default: 100.
	Percent *int `json:"percent,omitempty"`

	// MaxInFlight bounds the copies in flight; a copy beyond it is dropped
	// (counted), never queued. Default: 256.
	MaxInFlight int `json:"max_in_flight,omitempty"`

	// GRPCConfig holds the options of a `dns:` mirror, as those of a `dns:`
	// backend; `timeout` bounds each copy, for HTTP mirrors too (default
	// 10s here). Only `timeout` applies to HTTP mirrors.
	GRPCConfig
}

// mirrorComponent names mirrors in the admin view and the gRPC metrics.
const mirrorComponent Component = "mirror"

// mirrorMetrics are the mirrors' collectors, shared by every config.
var mirrorMetrics = mirror.NewMetrics()

// mirrors holds one mirror.Mirror per distinct mirror config (its copies in
// flight, its bound), shared across reloads like the gRPC upstreams.
var mirrors = caddy.NewUsagePool()

// pooledMirror is a Mirror in the usage pool, with what its admin view
// needs.
type pooledMirror struct {
	*mirror.Mirror
	name   string
	sender mirrorSender
}

// Destruct retires the mirror: it takes no more copies, and closes the
// sender once those in flight have ended (each within its timeout), without
// holding up the reload. The configs that used it have finished their
// requests by now (Gateway.Cleanup): a later copy is counted dropped.
func (p *pooledMirror) Destruct() error {
	p.Retire(func() { _ = p.sender.close() })
	return nil
}

// mirrorSender is a mirror's way of sending, with its admin view.
type mirrorSender interface {
	mirror.Sender
	status() BackendStatus
	close() error
}

// percent is Percent with its default.
func (m *MirrorConfig) percent() int {
	if m.Percent == nil {
		return mirror.DefaultPercent
	}
	return *m.Percent
}

// name is a mirror's label in metrics and logs: its URL.
func (m *MirrorConfig) name() string { return strings.Join(m.URL, " ") }

// check validates a mirror without side effects; errors name the field.
func (m *MirrorConfig) check(i int) error {
	field := fmt.Sprintf("mirrors[%d]", i)
	if len(m.URL) == 0 {
		return fmt.Errorf("%s.url: required", field)
	}
	u, err := ParseBackendURL(m.name())
	if err != nil {
		return fmt.Errorf("%s.url: %v", field, err)
	}
	if m.Tenants != nil && len(m.Tenants) == 0 {
		// The Caddyfile refuses `tenants` alone; [] must not mean "all".
		return fmt.Errorf("%s.tenants: empty; leave it out to mirror every tenant", field)
	}
	for _, t := range m.Tenants {
		if t == access.AllTenants {
			return fmt.Errorf("%s.tenants: %q would mirror only a tenant named %q; leave tenants out to mirror every tenant", field, t, t)
		}
		if err := orgid.CheckOne(t); err != nil {
			return fmt.Errorf("%s.tenants: %q: %v", field, t, err)
		}
	}
	if m.MaxBufferedBytes != 0 {
		return fmt.Errorf("%s.max_buffered_bytes: a copy holds the request's own body, counted against the primary backend's max_buffered_bytes: set it in a dns: backend's grpc block (an HTTP backend has the default)", field)
	}
	if err := (mirror.Options{Percent: m.percent(), MaxInFlight: m.MaxInFlight, Timeout: time.Duration(m.Timeout)}).Check(); err != nil {
		return fmt.Errorf("%s: %v", field, err)
	}
	if m.MinReady < 0 {
		return fmt.Errorf("%s.min_ready %d: must not be negative (0 means the default, 1)", field, m.MinReady)
	}
	if u.Kind == KindHTTP {
		rest := m.GRPCConfig
		rest.Timeout = 0
		if b, _ := json.Marshal(rest); string(b) != "{}" {
			return fmt.Errorf("%s: %s are options of dns: mirrors; an HTTP mirror takes timeout only", field, b)
		}
		return nil
	}
	for _, target := range u.Targets {
		if err := m.grpcOptions(target, zap.NewNop()).Validate(); err != nil {
			return fmt.Errorf("%s: %v", field, err)
		}
	}
	return nil
}

// mirrorTimeout is a mirror's default per-copy timeout.
const mirrorTimeout = mirror.DefaultTimeout

// grpcOptions are the grpcpush options of one of a dns: mirror's targets.
func (m *MirrorConfig) grpcOptions(target string, logger *zap.Logger) grpcpush.Options {
	cfg := m.GRPCConfig
	if cfg.Timeout == 0 {
		cfg.Timeout = caddy.Duration(mirrorTimeout)
	}
	opts := grpcOptions(mirrorComponent, &Backend{GRPC: &cfg}, target, logger)
	opts.OnDone, opts.OnAnswer, opts.ReplaceHeaders = nil, nil, nil // the primary's request already has them
	return opts
}

// newMirrors builds (or takes from the pool) this config's mirrors.
func (g *Gateway) newMirrors(ctx caddy.Context) error {
	if len(g.Mirrors) == 0 {
		return nil
	}
	if err := registerCollectors(ctx, append(mirrorMetrics.Collectors(), grpcMetrics.Collectors()...)...); err != nil {
		return err
	}
	for i := range g.Mirrors {
		m, err := g.pooledMirror(ctx, &g.Mirrors[i])
		if err != nil {
			return fmt.Errorf("mirrors[%d]: %v", i, err)
		}
		g.mirrors = append(g.mirrors, m)
		g.tee = append(g.tee, m.Mirror)
	}
	return nil
}

// pooledMirror gets the pooled Mirror of cfg, creating it (with its sender)
// if no config has it, and records that this config holds it.
func (g *Gateway) pooledMirror(ctx caddy.Context, cfg *MirrorConfig) (*pooledMirror, error) {
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	u, err := ParseBackendURL(cfg.name())
	if err != nil {
		return nil, err
	}
	// The dns: mirrors' Handlers are pooled on their own (as backends'),
	// so the key holds the Handlers' keys: a rotated certificate gives new
	// connections, as for a backend.
	var sender mirrorSender
	if u.Kind == KindGRPC {
		s, err := g.grpcMirrorSender(cfg, u)
		if err != nil {
			return nil, err
		}
		sender = s
		raw = append(raw, s.key...)
	}
	key := "metrics_gateway.mirror:" + string(raw)
	val, _, err := mirrors.LoadOrNew(key, func() (caddy.Destructor, error) {
		if sender == nil {
			if sender, err = newHTTPMirrorSender(ctx, cfg, u); err != nil {
				return nil, err
			}
		}
		m, err := mirror.New(sender, mirror.Options{
			Name: cfg.name(), Tenants: cfg.Tenants, Percent: cfg.percent(), MaxInFlight: cfg.MaxInFlight,
			Timeout: time.Duration(cfg.Timeout),
			Logger:  g.logger.Named("mirror"), Metrics: mirrorMetrics,
		})
		if err != nil {
			return nil, err
		}
		return &pooledMirror{Mirror: m, name: cfg.name(), sender: sender}, nil
	})
	if err != nil {
		return nil, err
	}
	g.pooled = append(g.pooled, key)
	pm := val.(*pooledMirror)
	// Kept across reloads: it logs through the newest config using it.
	g.released = append(g.released, pm.UseLogger(g.logger.Named("mirror")))
	return pm, nil
}

// grpcMirror sends copies over gRPC to a dns: mirror's priority groups.
type grpcMirror struct {
	priority *grpcpush.Priority
	handlers []*pooledHandler
	target   string
	key      string
}

func (g *Gateway) grpcMirrorSender(cfg *MirrorConfig, u *ParsedURL) (*grpcMirror, error) {
	logger := g.logger.Named("mirror")
	s := &grpcMirror{target: cfg.name()}
	groups := make([]*grpcpush.Handler, 0, len(u.Targets))
	for _, target := range u.Targets {
		h, err := g.pooledGRPCHandler(cfg.grpcOptions(target, logger))
		if err != nil {
			return nil, err
		}
		s.key += h.key
		s.handlers = append(s.handlers, h)
		groups = append(groups, h.Handler)
	}
	var err error
	s.priority, err = grpcpush.NewPriority(groups, grpcpush.PriorityOptions{MinReady: cfg.MinReady, Logger: logger})
	return s, err
}

func (s *grpcMirror) Send(ctx context.Context, q *grpcpush.Request) (int, error) {
	return s.priority.Send(ctx, q)
}

// Unreachable lets the mirror count a copy failed without a call while no
// endpoint accepts connections.
func (s *grpcMirror) Unreachable() bool { return s.priority.Unreachable() }

// close does nothing: the Handlers are pooled on their own, released with
// each config that holds them.
func (s *grpcMirror) close() error { return nil }

func (s *grpcMirror) status() BackendStatus {
	st := BackendStatus{Component: mirrorComponent, Kind: KindGRPC, Target: s.target, Endpoints: []EndpointStatus{}}
	current := s.priority.Current()
	for i, h := range s.handlers {
		grp := GroupStatus{Target: h.Target().String(), Serving: i == current, Ready: h.Available(), Endpoints: h.Endpoints()}
		st.Endpoints = append(st.Endpoints, grp.Endpoints...)
		st.Groups = append(st.Groups, grp)
	}
	return st
}

// httpMirror sends copies through Caddy's reverse_proxy HTTP transport, to
// its URLs in turn.
type httpMirror struct {
	transport *reverseproxy.HTTPTransport
	scheme    string
	hosts     []string
	next      atomic.Uint64
	target    string
}

// newHTTPMirrorSender makes the transport itself, not through ctx, since
// the pooled mirror outlives the config that made it: the mirror closes it.
func newHTTPMirrorSender(ctx caddy.Context, cfg *MirrorConfig, u *ParsedURL) (*httpMirror, error) {
	// What the scheme implies (TLS, h2c), as for an HTTP backend.
	raw, err := transportFor(nil, u.Scheme)
	if err != nil {
		return nil, err
	}
	transport := &reverseproxy.HTTPTransport{}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, transport); err != nil { // its "protocol" key is the module's name
			return nil, fmt.Errorf("transport: %v", err)
		}
	}
	scheme := "http" // h2c too: the transport speaks HTTP/2 over it
	if u.Scheme == "https" {
		scheme = "https"
	}
	if err := transport.Provision(ctx); err != nil {
		return nil, fmt.Errorf("transport: %v", err)
	}
	return &httpMirror{transport: transport, scheme: scheme, hosts: u.Dials, target: cfg.name()}, nil
}

func (s *httpMirror) Send(ctx context.Context, q *grpcpush.Request) (int, error) {
	host := s.hosts[int(s.next.Add(1)-1)%len(s.hosts)]
	body := q.BodyReader() // closed by the transport, or below
	defer body.Close()
	req, err := http.NewRequestWithContext(ctx, q.Method, s.scheme+"://"+host+q.URL, body)
	if err != nil {
		return 0, err
	}
	req.ContentLength = int64(len(q.Body()))
	for _, hd := range q.Headers {
		if hd.Key == "Host" {
			continue // the mirror's own host
		}
		req.Header[hd.Key] = hd.Values
	}
	if _, ok := req.Header["User-Agent"]; !ok {
		// As reverse_proxy does: no Go-http-client of its own for a client
		// that sent none.
		req.Header["User-Agent"] = []string{""}
	}
	resp, err := s.transport.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func (s *httpMirror) close() error { return s.transport.Cleanup() }

func (s *httpMirror) status() BackendStatus {
	return BackendStatus{Component: mirrorComponent, Kind: KindHTTP, Target: s.target}
}

// mirrored reports whether a request is a write the mirrors copy: a POST
// on a route that ingests series. Other writes (block uploads, Graphite's
// storage schemas) are not copied.
func (r *Route) mirrored(method string) bool {
	return method == http.MethodPost && r.Ingests
}
