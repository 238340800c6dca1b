package grpcpush

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"go.uber.org/zap"
)

// Defaults of the options, chosen to match what a Mimir cluster expects.
const (
	// DefaultRefresh is how often the target is re-resolved. grpc-go's own dns
	// resolver re-resolves only after a failure, so new endpoints would idle.
	DefaultRefresh = 30 * time.Second
	// DefaultTimeout bounds one request end to end; past it the client gets 504.
	DefaultTimeout = 30 * time.Second
	// DefaultRetries is how often a request is retried after UNAVAILABLE.
	DefaultRetries = 2
	// DefaultMaxRequestBody is Mimir's default gRPC max receive message size.
	DefaultMaxRequestBody int64 = 100 << 20
	// DefaultKeepaliveTime and DefaultKeepaliveTimeout are dskit's client
	// defaults; Mimir's server accepts pings every 10s, even without streams.
	DefaultKeepaliveTime    = 20 * time.Second
	DefaultKeepaliveTimeout = 10 * time.Second
	// DefaultBackendName labels the metrics when Options.BackendName is empty.
	DefaultBackendName = "distributor"
	// DefaultMaxFails is how many failures within FailDuration take an
	// endpoint out, as in Caddy's reverse_proxy.
	DefaultMaxFails = 1
)

// Load-balancing policies (Options.LBPolicy), named as in Caddy's
// reverse_proxy.
const (
	// LBRoundRobin sends each call to the next endpoint (grpc-go's
	// round_robin). The default.
	LBRoundRobin = "round_robin"
	// LBLeastConn sends each call to the endpoint with fewer calls in flight
	// of two picked at random (grpc-go's least_request, power of two choices).
	LBLeastConn = "least_conn"
)

// Limits of the options.
const (
	// MaxRetries is grpc-go's cap of 5 attempts per call, minus the first.
	MaxRetries = 4
	// MinKeepaliveTime is the ping interval Mimir's server enforces (a client
	// pinging more often is sent GOAWAY "too_many_pings").
	MinKeepaliveTime = 10 * time.Second
	// MinRefresh keeps a typo ("1ms") from turning into a DNS flood.
	MinRefresh = 10 * time.Millisecond
	// MaxMessageOverhead is the room above MaxRequestBody that the tunnel's
	// method, URL and headers may use in one gRPC message.
	MaxMessageOverhead = 1 << 20
)

// Options configure a Handler. The zero value of every field means its default.
type Options struct {
	// Target is dns:///host:port, dns://authority/host:port or dns:///ip:port
	// (see ParseTarget).
	Target string
	// Refresh is the re-resolution interval (default 30s).
	Refresh time.Duration
	// Timeout bounds each request (default 30s); past it the client gets 504.
	Timeout time.Duration
	// Retries is how often a call that failed with UNAVAILABLE (endpoint died,
	// connection refused or reset, GOAWAY) is retried on another endpoint,
	// 0-4. nil means the default (2); use Ptr(0) to disable retries.
	Retries *int
	// MaxRequestBody is the largest body accepted (default 100 MiB); larger
	// ones get 413 without any RPC. It also sets the gRPC message limits.
	MaxRequestBody int64
	// TLS enables TLS towards the endpoints; nil means plaintext.
	TLS *TLSOptions
	// KeepaliveTime and KeepaliveTimeout configure HTTP/2 pings on idle
	// connections (defaults 20s and 10s; pings are sent without streams too).
	KeepaliveTime, KeepaliveTimeout time.Duration
	// Compression is "" (none) or "gzip".
	Compression string
	// LBPolicy is LBRoundRobin ("", the default) or LBLeastConn.
	LBPolicy string
	// FailDuration is how long a failed call is remembered by the passive
	// health check; 0 (the default) turns passive health checks off.
	FailDuration time.Duration
	// MaxFails is how many failures within FailDuration take an endpoint out
	// (default 1). Only with FailDuration.
	MaxFails int
	// UnhealthyStatus are the HTTP statuses that count as failures: 100-599,
	// or 1-5 for a whole class (5 is 5xx), as in Caddy's JSON. Transport
	// failures (UNAVAILABLE, deadline exceeded) always count. Only with
	// FailDuration.
	UnhealthyStatus []int
	// UnhealthyLatency makes a call that took longer count as a failure (0:
	// latency does not count). Only with FailDuration.
	UnhealthyLatency time.Duration
	// Logger receives endpoint-set changes (info) and failed requests (debug).
	// nil means no logging.
	Logger *zap.Logger
	// Metrics, when not nil, is updated by the Handler (see NewMetrics).
	Metrics *Metrics
	// BackendName is the "backend" label of the metrics and the prefix of
	// error bodies (default "distributor").
	BackendName string
	// OnDone, when not nil, is called after every request with the endpoint
	// ("ip:port") of its last attempt ("" when no endpoint was picked) and the
	// status sent to the client (499 when the client went away). It runs on the
	// request goroutine: keep it cheap.
	OnDone func(r *http.Request, endpoint string, status int)
}

// TLSOptions configure TLS towards the endpoints.
type TLSOptions struct {
	// CAFile is a PEM bundle of CAs to trust; "" means the system pool.
	CAFile string
	// CertFile and KeyFile are a client certificate and key (PEM), both or
	// neither.
	CertFile, KeyFile string
	// ServerName overrides the name verified in the endpoints' certificates;
	// by default the host of the target.
	ServerName string
	// InsecureSkipVerify disables certificate verification (testing only).
	InsecureSkipVerify bool
}

// Ptr returns a pointer to v, for Options.Retries.
func Ptr[T any](v T) *T { return &v }

// settings are validated Options with defaults applied.
type settings struct {
	target           Target
	refresh          time.Duration
	timeout          time.Duration
	retries          int
	maxBody          int64
	tls              *tls.Config
	keepaliveTime    time.Duration
	keepaliveTimeout time.Duration
	compression      string
	lbPolicy         string
	health           *healthConfig // nil: passive health checks off
	logger           *zap.Logger
	metrics          *Metrics
	backend          string
	onDone           func(*http.Request, string, int)
}

// settings validates o and fills in the defaults.
func (o Options) settings() (settings, error) {
	t, err := ParseTarget(o.Target)
	if err != nil {
		return settings{}, err
	}
	s := settings{
		target:           t,
		refresh:          orDefault(o.Refresh, DefaultRefresh),
		timeout:          orDefault(o.Timeout, DefaultTimeout),
		retries:          DefaultRetries,
		maxBody:          orDefault(o.MaxRequestBody, DefaultMaxRequestBody),
		keepaliveTime:    orDefault(o.KeepaliveTime, DefaultKeepaliveTime),
		keepaliveTimeout: orDefault(o.KeepaliveTimeout, DefaultKeepaliveTimeout),
		compression:      o.Compression,
		lbPolicy:         orDefault(o.LBPolicy, LBRoundRobin),
		health:           o.healthConfig(),
		logger:           o.Logger,
		metrics:          o.Metrics,
		backend:          o.BackendName,
		onDone:           o.OnDone,
	}
	if o.Retries != nil {
		s.retries = *o.Retries
	}
	if s.logger == nil {
		s.logger = zap.NewNop()
	}
	if s.backend == "" {
		s.backend = DefaultBackendName
	}
	if err := s.check(o); err != nil {
		return settings{}, err
	}
	if o.TLS != nil {
		if s.tls, err = o.TLS.config(); err != nil {
			return settings{}, err
		}
	}
	return s, nil
}

// check rejects values that cannot work.
func (s *settings) check(o Options) error {
	var errs []error
	if o.Refresh < 0 || (o.Refresh > 0 && o.Refresh < MinRefresh) {
		errs = append(errs, fmt.Errorf("refresh %v: must be at least %v", o.Refresh, MinRefresh))
	}
	if o.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout %v: must be positive", o.Timeout))
	}
	if s.retries < 0 || s.retries > MaxRetries {
		errs = append(errs, fmt.Errorf("retries %d: must be 0-%d (gRPC allows at most 5 attempts)", s.retries, MaxRetries))
	}
	if o.MaxRequestBody < 0 || s.maxBody > 2<<30-MaxMessageOverhead {
		errs = append(errs, fmt.Errorf("max_request_body %d: must be 1 byte to 2 GiB-1 MiB", o.MaxRequestBody))
	}
	if o.KeepaliveTime < 0 || (o.KeepaliveTime > 0 && o.KeepaliveTime < MinKeepaliveTime) {
		errs = append(errs, fmt.Errorf("keepalive time %v: must be at least %v (Mimir's server closes connections that ping more often)", o.KeepaliveTime, MinKeepaliveTime))
	}
	if o.KeepaliveTimeout < 0 {
		errs = append(errs, fmt.Errorf("keepalive timeout %v: must be positive", o.KeepaliveTimeout))
	}
	if s.compression != "" && s.compression != "gzip" {
		errs = append(errs, fmt.Errorf("compression %q: must be \"\" or \"gzip\"", s.compression))
	}
	if s.lbPolicy != LBRoundRobin && s.lbPolicy != LBLeastConn {
		errs = append(errs, fmt.Errorf("lb_policy %q: must be %s or %s", s.lbPolicy, LBRoundRobin, LBLeastConn))
	}
	errs = append(errs, o.checkHealth()...)
	return errors.Join(errs...)
}

// config builds the tls.Config, loading the files once.
func (o *TLSOptions) config() (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName:         o.ServerName,
		InsecureSkipVerify: o.InsecureSkipVerify, //nolint:gosec // explicit opt-in for testing
		MinVersion:         tls.VersionTLS12,
	}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca %s: no PEM certificate found", o.CAFile)
		}
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("tls: cert and key must be given together")
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// orDefault returns v, or def when v is the zero value.
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Key returns a string that is equal for two Options exactly when they would
// build interchangeable Handlers, for sharing one Handler (one ClientConn)
// between configurations, e.g. across config reloads. Logger, Metrics and
// OnDone are not part of it: a shared Handler keeps the Metrics and OnDone
// of its creator; SetLogger replaces its Logger.
func (o Options) Key() (string, error) {
	s, err := o.settings()
	if err != nil {
		return "", err
	}
	var t TLSOptions
	if o.TLS != nil {
		t = *o.TLS
	}
	return fmt.Sprintf("%s|refresh=%v|timeout=%v|retries=%d|max_body=%d|keepalive=%v/%v|compression=%s|backend=%s|tls=%t,%q,%q,%q,%q,%t|lb=%s|health=%s",
		s.target, s.refresh, s.timeout, s.retries, s.maxBody, s.keepaliveTime, s.keepaliveTimeout,
		s.compression, s.backend, o.TLS != nil, t.CAFile, t.CertFile, t.KeyFile, t.ServerName, t.InsecureSkipVerify,
		s.lbPolicy, s.health.key()), nil
}
