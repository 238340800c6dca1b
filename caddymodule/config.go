package caddymodule

import (
	"encoding/json"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// ProxyConfig names the backend of each component, like the `gateway.proxy`
// block of Grafana Enterprise Metrics. A component without a backend sends
// its requests to Default.
type ProxyConfig struct {
	// Default serves every component without a backend of its own and every
	// path the route table does not claim (`/config`, `/memberlist`,
	// `/api/v1/user_limits`, ...). Required.
	Default *Backend `json:"default,omitempty"`

	// AdminAPI serves `/admin/api` (GEM's admin API). Default: `default`.
	AdminAPI *Backend `json:"admin_api,omitempty"`

	// Alertmanager serves the Alertmanager UI and API under
	// `alertmanager_http_prefix`, `/multitenant_alertmanager` and the
	// Alertmanager configuration API `/api/v1/alerts`. Default: `default`.
	Alertmanager *Backend `json:"alertmanager,omitempty"`

	// Compactor serves `/compactor` and block uploads under
	// `/api/v1/upload/block`. Default: `default`.
	Compactor *Backend `json:"compactor,omitempty"`

	// Distributor serves writes: `/api/v1/push` (Remote-Write 1.0 and 2.0,
	// Influx under `/api/v1/push/influx/write`), `/otlp/v1/metrics`,
	// `/distributor` and Cortex's `/api/prom/push`. This is the backend to
	// point at a headless Service with a `dns:///` URL. Default: `default`.
	Distributor *Backend `json:"distributor,omitempty"`

	// Graphite serves `/graphite` (GEM's Graphite write and query paths).
	// Default: `default`.
	Graphite *Backend `json:"graphite,omitempty"`

	// Ingester serves `/ingester`. Default: `default`.
	Ingester *Backend `json:"ingester,omitempty"`

	// QueryFrontend serves reads: everything under `prometheus_http_prefix`
	// except the ruler's paths, Cortex's `/api/prom` and
	// `/api/v1/status/buildinfo`. Default: `default`.
	QueryFrontend *Backend `json:"query_frontend,omitempty"`

	// Ruler serves `/ruler`, `/api/v1/rules`, the ruler's Prometheus-style
	// paths under `prometheus_http_prefix` (`/config/v1/rules`,
	// `/api/v1/rules`, `/api/v1/alerts`) and their Cortex legacy forms.
	// Default: `default`.
	Ruler *Backend `json:"ruler,omitempty"`

	// StoreGateway serves `/store-gateway`. Default: `default`.
	StoreGateway *Backend `json:"store_gateway,omitempty"`
}

// byComponent returns the configured backends by component; unset ones are
// absent.
func (p *ProxyConfig) byComponent() map[Component]*Backend {
	all := map[Component]*Backend{}
	for _, c := range Components {
		if b := p.Get(c); b != nil {
			all[c] = b
		}
	}
	return all
}

// ParseComponent accepts a component name in GEM's YAML spelling
// ("store_gateway") or its flag spelling ("store-gateway").
func ParseComponent(name string) (Component, bool) {
	c := Component(strings.ReplaceAll(name, "-", "_"))
	for _, known := range Components {
		if c == known {
			return c, true
		}
	}
	return "", false
}

// Set stores b as the backend of component c. It returns false for an
// unknown component.
func (p *ProxyConfig) Set(c Component, b *Backend) bool {
	slot := p.slot(c)
	if slot == nil {
		return false
	}
	*slot = b
	return true
}

// Get returns the backend configured for component c, or nil.
func (p *ProxyConfig) Get(c Component) *Backend {
	if slot := p.slot(c); slot != nil {
		return *slot
	}
	return nil
}

func (p *ProxyConfig) slot(c Component) **Backend {
	switch c {
	case ComponentDefault:
		return &p.Default
	case ComponentAdminAPI:
		return &p.AdminAPI
	case ComponentAlertmanager:
		return &p.Alertmanager
	case ComponentCompactor:
		return &p.Compactor
	case ComponentDistributor:
		return &p.Distributor
	case ComponentGraphite:
		return &p.Graphite
	case ComponentIngester:
		return &p.Ingester
	case ComponentQueryFrontend:
		return &p.QueryFrontend
	case ComponentRuler:
		return &p.Ruler
	case ComponentStoreGateway:
		return &p.StoreGateway
	}
	return nil
}

// Backend is where one component's requests go.
type Backend struct {
	// URL of the component, in one of two forms:
	//
	// - One or more HTTP URLs separated by spaces: `http://host:port`,
	//   `https://host:port` or `h2c://host:port` (cleartext HTTP/2). They are
	//   served by Caddy's own `reverse_proxy` handler; all URLs of one backend
	//   must share a scheme.
	// - One or more gRPC targets separated by spaces: `dns:///host:port`,
	//   `dns:///ip:port`, or `dns://dns-server:port/host:port` to ask a
	//   specific DNS server (RFC 4501). Every A/AAAA record of host becomes an
	//   endpoint; each request is tunnelled through `/httpgrpc.HTTP/Handle`
	//   (the gRPC service every Mimir/Cortex component serves on its gRPC
	//   port, 9095 by default) and balanced (lb_policy) over persistent
	//   HTTP/2 connections. Several targets are priority groups, in order
	//   (e.g. one headless Service per zone, the gateway's own zone first):
	//   a request goes to the first group with `grpc.min_ready` READY (and
	//   healthy) endpoints, and a call that fails UNAVAILABLE in its group is
	//   retried in the next. dns: and HTTP URLs cannot be mixed.
	//
	// Required.
	URL string `json:"url"`

	// ReverseProxy is the configuration of Caddy's `reverse_proxy` handler
	// (http.handlers.reverse_proxy, without the "handler" key) for an HTTP
	// backend: load balancing, health checks, transport, timeouts, header
	// manipulation. `upstreams` is filled from URL unless set; for `https://`
	// and `h2c://` URLs the HTTP transport's TLS or HTTP/2 settings are added
	// when not given. Only valid with HTTP URLs.
	ReverseProxy json.RawMessage `json:"reverse_proxy,omitempty"`

	// GRPC tunes a `dns:` backend. Only valid with a `dns:` URL; all its
	// settings have defaults.
	GRPC *GRPCConfig `json:"grpc,omitempty"`
}

// GRPCConfig tunes the gRPC upstream of a `dns:` backend. The defaults match
// what Mimir's and dskit's own gRPC clients use.
type GRPCConfig struct {
	// Refresh is how often the target's DNS name is resolved again, so that
	// new pods get traffic and removed ones stop getting it. A failed or
	// empty answer keeps the last good endpoints. Default: 30s.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	// Timeout bounds each request from its start: the body upload, the
	// call and its retries. When it passes the client gets 504, or 408 if
	// the body had not fully arrived. Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Retries is how many times a request that failed because its endpoint
	// went away (gRPC UNAVAILABLE: connection refused or reset, GOAWAY) is
	// tried again on another endpoint; 0 to 4 (gRPC allows 5 attempts).
	// Nothing else is retried. Default: 2.
	Retries *int `json:"retries,omitempty"`

	// MaxRequestBody is the largest request body, in bytes, tunnelled; a
	// larger one is answered 413 without contacting a backend. It also sets
	// the gRPC send limit. Default: 104857600 (100 MiB, Mimir's
	// -server.grpc-max-recv-msg-size-bytes; Cortex's default is 4 MiB).
	MaxRequestBody int64 `json:"max_request_body,omitempty"`

	// MaxBufferedBytes bounds the request body bytes this backend holds at
	// once, over all its requests and targets: bodies being read and bodies
	// waiting for or in their call. A buffer grows as the body arrives (a
	// Content-Length reserves at most 64 KiB), and a request whose body
	// would take the backend over the bound is answered 503 with
	// Retry-After before more of it is read: the client retries, nothing is
	// lost. At least what reading a body of max_request_body holds at its
	// peak (a buffer grows in powers of two, and the last two are held
	// while the bytes move): 171968513 (164 MiB) for the default 100 MiB,
	// 12 MiB for 4 MiB; the error of a smaller value says how much.
	// Default: half the Go memory limit (GOMEMLIMIT, which Caddy sets to
	// 90 % of the container's memory limit, or of the machine's memory
	// without one) or 1 GiB without a Go memory limit, and at least that.
	MaxBufferedBytes int64 `json:"max_buffered_bytes,omitempty"`

	// MaxResponseBody is the largest response body, in bytes, accepted
	// from an endpoint; a larger answer is the backend's failure and the
	// client gets 502 naming the backend. Default: 104857600 (100 MiB,
	// Mimir's -server.grpc-max-send-msg-size-bytes).
	MaxResponseBody int64 `json:"max_response_body,omitempty"`

	// TLS enables TLS to the gRPC endpoints. Default: plaintext, as Mimir's
	// gRPC port serves by default.
	TLS *GRPCTLSConfig `json:"tls,omitempty"`

	// KeepaliveTime is how long a connection may be idle before the client
	// pings it. Mimir's server rejects pings more often than every 10s.
	// Default: 20s.
	KeepaliveTime caddy.Duration `json:"keepalive_time,omitempty"`

	// KeepaliveTimeout is how long the client waits for a ping's answer
	// before closing the connection. Default: 10s.
	KeepaliveTimeout caddy.Duration `json:"keepalive_timeout,omitempty"`

	// Compression compresses request messages: "" (none) or "gzip". Mimir
	// accepts gzip; Remote-Write bodies are already snappy-compressed, so
	// this mostly costs CPU. Default: none.
	Compression string `json:"compression,omitempty"`

	// LBPolicy chooses the endpoint of each call: "round_robin" (the next
	// one) or "least_conn" (of two endpoints picked at random, the one with
	// fewer calls in flight: grpc-go's least_request balancer). Default:
	// round_robin.
	LBPolicy string `json:"lb_policy,omitempty"`

	// FailDuration turns on passive health checks: how long a failed call
	// is remembered. An endpoint with MaxFails failures within FailDuration
	// is out (gets no calls) until enough of them are older than
	// FailDuration. If every endpoint is out, calls go to all of them.
	// Default: 0 (off).
	FailDuration caddy.Duration `json:"fail_duration,omitempty"`

	// MaxFails is how many failures within FailDuration take an endpoint
	// out. Default: 1.
	MaxFails int `json:"max_fails,omitempty"`

	// UnhealthyStatus are the HTTP statuses that count as failures, e.g.
	// [503] or [5] (a single digit is a class: 5 is 5xx), as in
	// reverse_proxy. Transport failures (gRPC UNAVAILABLE, deadline
	// exceeded) always count. Default: none.
	UnhealthyStatus []int `json:"unhealthy_status,omitempty"`

	// UnhealthyLatency makes a call that takes longer count as a failure
	// of its endpoint, unless the other endpoints were slow at the same
	// time: while the call was overdue they had calls in flight or ending
	// and answered none in time (then the gateway's node or the network
	// paused, not the endpoint), or every other endpoint is out and no
	// later target takes over (taking the last one out would put them all
	// back in). Late calls of one endpoint that were in flight together
	// count as one failure. Default: 0 (latency does not count).
	UnhealthyLatency caddy.Duration `json:"unhealthy_latency,omitempty"`

	// MinReady applies to a backend with several `dns:` targets: a target
	// (priority group) serves only while it has at least this many READY
	// endpoints that the passive health check has in; otherwise requests go
	// to the next group. If no group has that many, the first group with any
	// serves. Default: 1.
	MinReady int `json:"min_ready,omitempty"`
}

// GRPCTLSConfig configures TLS to gRPC endpoints.
type GRPCTLSConfig struct {
	// CA is a PEM file of the certificate authorities that sign the
	// endpoints' certificates. Default: the system roots.
	CA string `json:"ca,omitempty"`
	// Cert and Key are PEM files of a client certificate and its key, for
	// mutual TLS. Both or neither.
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	// ServerName is the name the endpoints' certificates are checked
	// against. Default: the host of the target.
	ServerName string `json:"server_name,omitempty"`
	// InsecureSkipVerify turns off certificate checks. For testing only.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
}
