// Package caddymodule is the metrics_gateway Caddy HTTP handler: the front
// door of a Grafana Mimir, Cortex or Grafana Enterprise Metrics cluster. It
// routes each request by path to the component that serves it, through
// Caddy's reverse_proxy for HTTP backends or through a gRPC upstream that
// balances every request over all resolved endpoints (package grpcpush) for
// dns: backends.
package caddymodule

import (
	"fmt"
	"net/http"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/metrics-gateway/metrics_gateway/access"
	"github.com/metrics-gateway/metrics_gateway/grpcpush"
	"github.com/metrics-gateway/metrics_gateway/mirror"
)

func init() {
	caddy.RegisterModule(Gateway{})
}

// Gateway is the metrics_gateway HTTP handler. It answers `/` and `/ready`
// itself and sends every other request to the backend of the component the
// route table assigns to its path. Its JSON mirrors the `gateway` block of
// Grafana Enterprise Metrics.
type Gateway struct {
	// Proxy names each component's backend. `default` is required.
	Proxy ProxyConfig `json:"proxy"`

	// PrometheusHTTPPrefix is the path prefix of the Prometheus HTTP API,
	// as Mimir's -http.prometheus-http-prefix. Must start with "/".
	// Default: "/prometheus".
	PrometheusHTTPPrefix string `json:"prometheus_http_prefix,omitempty"`

	// AlertmanagerHTTPPrefix is the path prefix of the Alertmanager UI and
	// API, as Mimir's -http.alertmanager-http-prefix. Must start with "/".
	// Default: "/alertmanager".
	AlertmanagerHTTPPrefix string `json:"alertmanager_http_prefix,omitempty"`

	// DefaultTenant is set as X-Scope-OrgID on requests that carry none.
	// Without Tenant, a request with more than one X-Scope-OrgID header is
	// answered 400 on every backend. Default: none (requests without a
	// tenant reach HTTP backends as they are; gRPC backends answer them 401).
	DefaultTenant string `json:"default_tenant,omitempty"`

	// Tenant sets X-Scope-OrgID on every request from this value, with
	// placeholders evaluated per request, e.g. "{http.auth.user.id}" after
	// basic_auth. It replaces any X-Scope-OrgID the client sent, so a client
	// can never choose another tenant; if it evaluates empty the request is
	// answered 401. Not with DefaultTenant, which it would leave unused.
	// Default: none.
	Tenant string `json:"tenant,omitempty"`

	// RetryAfter is the Retry-After of the gateway's own 429 and 503
	// answers, computed as Mimir's distributor does: the client's
	// Retry-Attempt header n gives min·2^(n-1), at most max, ±50 % jitter,
	// within [min, max], in whole seconds, so that retrying clients back off
	// and spread out. Answers relayed from a component keep their own.
	// Default: min 6s, max 96s (Mimir's).
	RetryAfter *RetryAfterConfig `json:"retry_after,omitempty"`

	// AccessPolicies, when set, decides each request (but `/` and `/ready`)
	// by its credential: a static token (the Basic password, with the
	// tenant as username, or a Bearer token with the tenant in
	// X-Scope-OrgID) or an OpenID Connect JWT, against policies that grant
	// scopes (metrics:write, metrics:read, rules:read, ...) on tenants. Each
	// route needs a scope (the README's route table; admin for paths the
	// table does not claim). An allowed request reaches its backend with
	// exactly one X-Scope-OrgID and without Authorization; the others are
	// answered 401 (with WWW-Authenticate), 403 or 400 and reach no backend.
	// Not allowed together with Tenant or DefaultTenant. Default: none (the
	// tenant comes from tenant, default_tenant or the client).
	AccessPolicies *access.Config `json:"access_policies,omitempty"`

	// Mirrors each send a copy of every write (the pushes the route table
	// sends to the distributor, and Graphite writes) to another cluster,
	// without slowing or failing the primary. Default: none.
	Mirrors []MirrorConfig `json:"mirrors,omitempty"`

	routes   *Routes
	backends map[Component]upstream
	// pooled are the keys of the gRPC upstreams, budgets and mirrors this
	// instance holds in the usage pools, released once it is cleaned up
	// and its requests are done (retire).
	pooled []string
	retire *retirement
	// released undoes what this instance changed on shared things (the
	// loggers it registered on pooled Handlers), on Cleanup.
	released   []func()
	retryAfter grpcpush.RetryAfter
	logger     *zap.Logger
	access     gatewayAccess
	mirrors    []*pooledMirror
	tee        mirror.Set // the mirrors, for the writes' backends
}

// RetryAfterConfig sets the Retry-After of the gateway's own 429 and 503
// answers.
type RetryAfterConfig struct {
	// Min is the delay of a first attempt, before jitter. Default: 6s.
	Min caddy.Duration `json:"min,omitempty"`
	// Max caps the delay. Default: 96s.
	Max caddy.Duration `json:"max,omitempty"`
	// Off sends no Retry-After: clients use their own backoff.
	Off bool `json:"off,omitempty"`
}

// value is c as grpcpush computes it (nil: the defaults).
func (c *RetryAfterConfig) value() grpcpush.RetryAfter {
	if c == nil {
		return grpcpush.RetryAfter{}
	}
	return grpcpush.RetryAfter{Min: time.Duration(c.Min), Max: time.Duration(c.Max), Off: c.Off}
}

// upstream is one backend, whatever serves it.
type upstream interface {
	// serve sends r to the backend; mirrored says the mirrors get a copy.
	serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, mirrored bool) error
	status() BackendStatus
}

// CaddyModule returns the Caddy module information.
func (Gateway) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.metrics_gateway",
		New: func() caddy.Module { return new(Gateway) },
	}
}

// Provision checks the config and builds the route table and one upstream
// per configured backend. Components without a backend share default's.
func (g *Gateway) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	g.retire = new(retirement)
	g.setDefaults()
	parsed, err := g.checkConfig()
	if err != nil {
		return err
	}
	g.retryAfter = g.RetryAfter.value()
	if err := registerCollectors(ctx, requestDuration, inflightRequests); err != nil {
		return err
	}
	if err := g.provisionAccess(ctx); err != nil {
		return err
	}
	g.routes, err = NewRoutes(RouteTable(g.PrometheusHTTPPrefix, g.AlertmanagerHTTPPrefix))
	if err != nil {
		return err
	}
	if err := g.newMirrors(ctx); err != nil {
		return err
	}
	g.backends = make(map[Component]upstream, len(Components))
	for _, c := range Components {
		b := g.Proxy.Get(c)
		if b == nil {
			continue
		}
		up, err := g.newUpstream(ctx, c, b, parsed[c])
		if err != nil {
			return fmt.Errorf("proxy.%s: %v", c, err)
		}
		g.backends[c] = up
	}
	for _, c := range Components {
		if g.backends[c] == nil {
			g.backends[c] = g.backends[ComponentDefault]
		}
	}
	live.Store(g, struct{}{})
	return nil
}

// CheckConfig validates the config as Provision does, without side effects
// (no files read, nothing started): the Caddyfile adapter calls it, so that
// `caddy adapt` fails on what Provision would refuse. The adapter only
// parses; every rule of the config is here (or, for gRPC options, in
// grpcpush.Options.Validate, called from here), and every error names the
// field it is about.
func (g *Gateway) CheckConfig() error {
	c := *g
	c.setDefaults()
	_, err := c.checkConfig()
	return err
}

// setDefaults fills in the defaults of the top-level fields.
func (g *Gateway) setDefaults() {
	if g.PrometheusHTTPPrefix == "" {
		g.PrometheusHTTPPrefix = "/prometheus"
	}
	if g.AlertmanagerHTTPPrefix == "" {
		g.AlertmanagerHTTPPrefix = "/alertmanager"
	}
}

// checkConfig validates the config without side effects. Every error names
// the field it is about.
func (g *Gateway) checkConfig() (map[Component]*ParsedURL, error) {
	for field, prefix := range map[string]string{
		"prometheus_http_prefix":   g.PrometheusHTTPPrefix,
		"alertmanager_http_prefix": g.AlertmanagerHTTPPrefix,
	} {
		if err := CheckPrefix(prefix); err != nil {
			return nil, fmt.Errorf("%s: %v", field, err)
		}
	}
	// Prefixes that collide with each other or with a route of the table
	// (alertmanager_http_prefix /distributor) fail here, at adapt time too.
	if _, err := NewRoutes(RouteTable(g.PrometheusHTTPPrefix, g.AlertmanagerHTTPPrefix)); err != nil {
		return nil, err
	}
	backends := g.Proxy.byComponent()
	if len(backends) == 0 {
		return nil, fmt.Errorf("proxy: no backends configured; set at least proxy.default")
	}
	if g.Proxy.Default == nil {
		return nil, fmt.Errorf("proxy.default: required: it serves every component without a backend of its own")
	}
	if g.DefaultTenant != "" {
		if err := CheckTenantID(g.DefaultTenant); err != nil {
			return nil, fmt.Errorf("default_tenant: %v", err)
		}
	}
	if g.Tenant != "" {
		if err := CheckTenantTemplate(g.Tenant); err != nil {
			return nil, fmt.Errorf("tenant: %v", err)
		}
		if g.DefaultTenant != "" {
			return nil, fmt.Errorf("default_tenant: not used together with tenant, which sets the tenant of every request (one that evaluates empty or invalid gets 401, never default_tenant)")
		}
	}
	if err := g.RetryAfter.value().Check(); err != nil {
		return nil, err // names retry_after
	}
	if err := g.checkAccess(); err != nil {
		return nil, err // names access_policies
	}
	for i := range g.Mirrors {
		if err := g.Mirrors[i].check(i); err != nil {
			return nil, err
		}
	}
	parsed := make(map[Component]*ParsedURL, len(backends))
	for c, b := range backends {
		u, err := ParseBackendURL(b.URL)
		if err != nil {
			return nil, fmt.Errorf("proxy.%s.url: %v", c, err)
		}
		if u.Kind == KindHTTP && b.GRPC != nil {
			return nil, fmt.Errorf("proxy.%s.grpc: only valid with a dns: URL, not %s://", c, u.Scheme)
		}
		if u.Kind == KindGRPC && len(b.ReverseProxy) > 0 {
			return nil, fmt.Errorf("proxy.%s.reverse_proxy: only valid with HTTP URLs, not a dns: URL", c)
		}
		if u.Kind == KindGRPC {
			if err := checkGRPC(c, b, u); err != nil {
				return nil, err
			}
		}
		if u.Kind == KindHTTP {
			// What Provision would refuse (upstreams, transport), no I/O.
			if _, err := reverseProxyConfig(b.ReverseProxy, u); err != nil {
				return nil, fmt.Errorf("proxy.%s: %v", c, err)
			}
		}
		parsed[c] = u
	}
	if err := g.checkMirrorTargets(parsed); err != nil {
		return nil, err
	}
	return parsed, nil
}

// checkMirrorTargets refuses a mirror that sends where another mirror, or
// a backend of the mirrored writes, already does: each write would reach
// that cluster twice.
func (g *Gateway) checkMirrorTargets(backends map[Component]*ParsedURL) error {
	owner := map[string]string{}
	for _, c := range []Component{ComponentDistributor, ComponentGraphite} {
		u := backends[c]
		if u == nil {
			c, u = ComponentDefault, backends[ComponentDefault]
		}
		for _, a := range u.addresses() {
			owner[a] = "proxy." + string(c)
		}
	}
	for i := range g.Mirrors {
		u, err := ParseBackendURL(g.Mirrors[i].name())
		if err != nil {
			return fmt.Errorf("mirrors[%d].url: %v", i, err)
		}
		field := fmt.Sprintf("mirrors[%d]", i)
		for _, a := range u.addresses() {
			if first, dup := owner[a]; dup {
				return fmt.Errorf("%s.url: %s is %s's too: each write would reach it twice", field, redactPassword(a), first)
			}
			owner[a] = field
		}
	}
	return nil
}

// checkGRPC checks the gRPC options of a dns: backend, for each target.
func checkGRPC(c Component, b *Backend, u *ParsedURL) error {
	for _, target := range u.Targets {
		if err := grpcOptions(c, b, target, zap.NewNop()).Validate(); err != nil {
			return fmt.Errorf("proxy.%s.grpc: %v", c, err)
		}
	}
	if b.GRPC != nil && b.GRPC.MinReady < 0 {
		return fmt.Errorf("proxy.%s.grpc.min_ready %d: must not be negative (0 means the default, 1)", c, b.GRPC.MinReady)
	}
	return nil
}

// CheckPrefix checks a configurable route prefix (prometheus_http_prefix,
// alertmanager_http_prefix).
func CheckPrefix(p string) error {
	switch {
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("%q must start with /", p)
	case p == "/" || strings.HasSuffix(p, "/"):
		return fmt.Errorf("%q must not end with /", p)
	case strings.ContainsAny(p, "?#{} \t"):
		return fmt.Errorf("%q must be a plain path", p)
	case path.Clean(p) != p:
		// Request paths are matched in canonical form only.
		return fmt.Errorf("%q must be a canonical path (no //, . or .. segments)", p)
	}
	return nil
}

func (g *Gateway) newUpstream(ctx caddy.Context, c Component, b *Backend, u *ParsedURL) (upstream, error) {
	if u.Kind == KindGRPC {
		return g.newGRPCBackend(ctx, c, b, u)
	}
	return newHTTPBackend(ctx, c, b, u, g)
}

// ServeHTTP routes the request: one table lookup, the tenant header, one
// backend call.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	g.retire.enter()
	defer g.retire.leave()
	route := g.routes.Match(r.URL.Path)
	return instrument(w, r, route, func(w http.ResponseWriter) error {
		return g.serveRoute(w, r, next, route)
	})
}

// Placeholders set for every request the gateway handles.
const (
	placeholderRoute    = "http.metrics_gateway.route"    // the route label
	placeholderBackend  = "http.metrics_gateway.backend"  // the component
	placeholderEndpoint = "http.metrics_gateway.endpoint" // gRPC endpoint ip:port
)

func (g *Gateway) serveRoute(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, route *Route) error {
	addLogFields(r, zap.String("metrics_gateway.route", route.Name), zap.String("metrics_gateway.backend", string(route.Component)))
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl != nil {
		repl.Set(placeholderRoute, route.Name)
		repl.Set(placeholderBackend, string(route.Component))
	}
	if route.Component == ComponentGateway {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			// Not 200: a push sent here (a client given the gateway's base
			// URL) would be taken for ingested.
			w.Header().Set("Allow", "GET, HEAD")
			return g.answerError(w, r, http.StatusMethodNotAllowed, r.Method+" "+route.Path+": the gateway's own page takes GET and HEAD")
		}
		return serveLocal(w, route, repl)
	}
	if msg := targetProblem(r); msg != "" {
		return g.answerError(w, r, http.StatusBadRequest, msg)
	}
	if status, msg := g.admit(w, r, route, repl); status != 0 {
		return g.answerError(w, r, status, msg)
	}
	mirrored := len(g.tee) > 0 && route.mirrored(r.Method) && g.tee.Mirrors(r.Header.Get(tenantHeader))
	return g.backends[route.Component].serve(w, r, next, mirrored)
}

// targetProblem says why r's request target cannot be served as routed, or
// "". The route, and its access scope, is chosen on r.URL.Path; a backend
// must serve that same path.
func targetProblem(r *http.Request) string {
	switch {
	case !canonicalPath(r.URL.Path):
		// A backend that resolves "..", "." or "//" would serve another
		// path.
		return "path is not in canonical form (no ., .. or empty segments)"
	case r.URL.Opaque != "":
		// An absolute-form target without a path ("x:%zz", "http:1:b"):
		// routed as the default, and no component can parse it (a 500
		// that passive health would count against a healthy endpoint).
		return "the request target is not a path"
	case strings.IndexByte(r.RequestURI, '#') >= 0:
		// A request target has no fragment (RFC 9112). Go's server keeps
		// a raw "#" in the path, while the gRPC tunnel's far end (dskit's
		// httpgrpc) cuts the target there: /graphite/metrics#x, routed as
		// /graphite, would be served as /graphite/metrics.
		return "a request target has no fragment: send # as %23"
	}
	return ""
}

// canonicalPath reports whether p has no ".", ".." or empty segments (a
// trailing slash aside): the path every backend resolves to itself.
func canonicalPath(p string) bool {
	for rest := p; rest != ""; {
		var seg string
		seg, rest, _ = strings.Cut(strings.TrimPrefix(rest, "/"), "/")
		if seg == "." || seg == ".." || (seg == "" && rest != "") {
			return false
		}
		if rest != "" {
			rest = "/" + rest
		}
	}
	return true
}

// serveLocal answers the paths the gateway owns. While Caddy shuts down
// (the global shutdown_delay, {http.shutting_down}) /ready answers 503, so
// that Kubernetes takes the pod out of its Services before the listener
// closes; everything else is still served meanwhile.
func serveLocal(w http.ResponseWriter, route *Route, repl *caddy.Replacer) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	status, body := http.StatusOK, "OK"
	if route.Path == "/ready" {
		body = "ready"
		if shuttingDown(repl) {
			status, body = http.StatusServiceUnavailable, "shutting down"
		}
	}
	w.WriteHeader(status)
	_, err := w.Write([]byte(body))
	return err
}

// shuttingDown reports Caddy's {http.shutting_down}.
func shuttingDown(repl *caddy.Replacer) bool {
	if repl == nil {
		return false
	}
	v, _ := repl.Get("http.shutting_down")
	b, _ := v.(bool)
	return b
}

// addLogFields adds fields to the request's access log entry. A server
// without access logs (no `log` in the site, no "logs" in JSON) gets none:
// they would only cost allocations.
func addLogFields(r *http.Request, fields ...zap.Field) {
	if srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); srv == nil || srv.Logs == nil {
		return
	}
	extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	if !ok {
		return
	}
	for _, f := range fields {
		extra.Add(f)
	}
}

// Cleanup releases the gRPC upstreams, budgets and mirrors this config
// holds once its requests are done: Caddy cleans up the old config of a
// reload while its server may still be finishing requests, and a write
// among them still sends its copies through this config's mirrors when its
// primary answers. The reverse_proxy handlers were loaded through the
// Caddy context, which cleans them up.
func (g *Gateway) Cleanup() error {
	live.Delete(g)
	g.cleanupAccess()
	for _, b := range g.backends {
		if h, ok := b.(*httpBackend); ok {
			h.retire()
		}
	}
	for _, release := range g.released {
		release()
	}
	g.released = nil
	pooled := g.pooled
	if g.retire == nil { // not provisioned
		g.retire = new(retirement)
	}
	g.retire.start(func() {
		if err := releasePooled(pooled); err != nil {
			g.logger.Error("releasing the upstreams of a retired config", zap.Error(err))
		}
	})
	return nil
}

// retireLimit is the longest a retired config keeps its pooled upstreams
// for requests that are still running.
const retireLimit = 5 * time.Minute

// retirement counts a config's requests in flight and runs its release
// once it is retired (Cleanup) and none is left, or retireLimit after it
// was retired, whichever comes first; only once.
type retirement struct {
	n       atomic.Int64
	retired atomic.Bool
	once    sync.Once
	release func()
}

func (r *retirement) enter() { r.n.Add(1) }

func (r *retirement) leave() {
	if r.n.Add(-1) == 0 && r.retired.Load() {
		r.run()
	}
}

// run releases, once; it then drops release, so that the timer of
// retireLimit holds nothing of the config for the minutes it still runs.
func (r *retirement) run() {
	r.once.Do(func() {
		release := r.release
		r.release = nil
		release()
	})
}

// start retires: it runs release now when no request is in flight, else
// when the last one leaves (or at retireLimit). A second call does nothing.
func (r *retirement) start(release func()) {
	if r.retired.Load() {
		return // Cleanup may be called twice
	}
	r.release = release
	r.retired.Store(true)
	if r.n.Load() == 0 {
		r.run()
		return
	}
	time.AfterFunc(retireLimit, r.run)
}

// Interface guards.
var (
	_ caddy.Module                = (*Gateway)(nil)
	_ caddy.Provisioner           = (*Gateway)(nil)
	_ caddy.CleanerUpper          = (*Gateway)(nil)
	_ caddyhttp.MiddlewareHandler = (*Gateway)(nil)
)
