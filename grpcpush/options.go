package grpcpush

import (
	"cmp"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/grafana/dskit/httpgrpc"
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
	// DefaultMaxResponseBody is Mimir's default gRPC max send message size
	// (-server.grpc-max-send-msg-size-bytes: dskit's is 4 MiB, Mimir raises
	// it to 100 MiB): a component cannot send a larger answer anyway.
	DefaultMaxResponseBody int64 = 100 << 20
	// DefaultKeepaliveTime and DefaultKeepaliveTimeout are dskit's client
	// defaults; Mimir's server accepts pings every 10s, even without streams.
	DefaultKeepaliveTime    = 20 * time.Second
	DefaultKeepaliveTimeout = 10 * time.Second
	// DefaultBackendName labels the metrics and error lines when
	// Options.BackendName is empty.
	DefaultBackendName = "backend"
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
	// MaxMessageOverhead is the room above MaxRequestBody (MaxResponseBody)
	// that the tunnel's method, URL and headers (status and headers) may use
	// in one gRPC message.
	MaxMessageOverhead = 1 << 20
)

// Options configure a Handler. The zero value of every field means its default.
type Options struct {
	// Target is dns:///host:port, dns://authority/host:port or dns:///ip:port
	// (see ParseTarget).
	Target string
	// Refresh is the re-resolution interval (default 30s).
	Refresh time.Duration
	// Timeout bounds each request from its start, body upload included
	// (default 30s); past it the client gets 504 (408 while the body is
	// still arriving).
	Timeout time.Duration
	// Retries is how often a call that failed with UNAVAILABLE (endpoint died,
	// connection refused or reset, GOAWAY) is retried on another endpoint,
	// 0-4. nil means the default (2); use Ptr(0) to disable retries.
	Retries *int
	// MaxRequestBody is the largest body accepted (default 100 MiB); larger
	// ones get 413 without any RPC. It also sets the gRPC send limit.
	MaxRequestBody int64
	// MaxBufferedBytes bounds the request body bytes the Handler holds at
	// once, when it is used on its own (a Priority has its own Budget):
	// bodies being read and bodies waiting for or in their call. A request
	// whose body would go over it is answered 503. Default:
	// DefaultMaxBufferedBytes; at least MinBufferedBytes(MaxRequestBody).
	MaxBufferedBytes int64
	// MaxResponseBody is the largest answer body accepted from an endpoint
	// (default 100 MiB); a larger answer is the backend's failure: 502.
	MaxResponseBody int64
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
	// latency does not count), unless the other endpoints were slow at the
	// same time or are all out; late calls in flight together count once
	// (latency.go).
	// Only with FailDuration.
	UnhealthyLatency time.Duration
	// RetryAfter is the Retry-After ServeHTTP sends with its own 429 and
	// 503 answers (zero value: Mimir's 6s to 96s). Handle leaves the
	// writing, and so this choice, to its caller.
	RetryAfter RetryAfter
	// Logger receives endpoint-set changes (info) and failed requests (debug).
	// nil means no logging.
	Logger *zap.Logger
	// Metrics, when not nil, is updated by the Handler (see NewMetrics).
	Metrics *Metrics
	// BackendName is the "backend" label of the metrics and the prefix of
	// error bodies (default "backend").
	BackendName string
	// OnDone, when not nil, is called after every request with the endpoint
	// ("ip:port") of its last attempt ("" when no endpoint was picked) and the
	// status sent to the client (499 when the client went away). It runs on the
	// request goroutine: keep it cheap.
	OnDone func(r *http.Request, endpoint string, status int)
	// OnAnswer, when not nil, is called once per request that gets an
	// answer, before anything of it is written (so a caller can expose the
	// endpoint to whatever formats the response), with the endpoint
	// ("ip:port", "" when none was picked). Not called when the client went
	// away.
	OnAnswer func(r *http.Request, endpoint string)
	// ReplaceHeaders, when not nil, returns headers (canonical keys) that
	// replace the client's headers of the same names in the tunnelled
	// request; an entry with nil Values removes the client's header. The
	// caller uses it for X-Forwarded-*, which need the server's notion of
	// trusted proxies.
	ReplaceHeaders func(r *http.Request) []httpgrpc.Header
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
	maxBuffered      int64
	maxResponse      int64
	tls              *tls.Config
	keepaliveTime    time.Duration
	keepaliveTimeout time.Duration
	compression      string
	lbPolicy         string
	retryAfter       RetryAfter
	health           *healthConfig // nil: passive health checks off
	logger           *zap.Logger
	metrics          *Metrics
	backend          string
	onDone           func(*http.Request, string, int)
	onAnswer         func(*http.Request, string)
	replaceHeaders   func(*http.Request) []httpgrpc.Header
}

// Validate checks o the way New does, without reading the TLS files or
// touching the network: configuration checks (e.g. at adapt time) use it.
func (o Options) Validate() error {
	_, err := o.checked()
	return err
}

// settings validates o, fills in the defaults and loads the TLS files.
func (o Options) settings() (settings, error) {
	s, err := o.checked()
	if err != nil {
		return settings{}, err
	}
	if o.TLS != nil {
		if s.tls, err = o.TLS.config(); err != nil {
			return settings{}, err
		}
	}
	return s, nil
}

// checked validates o and fills in the defaults, except TLS.
func (o Options) checked() (settings, error) {
	t, err := ParseTarget(o.Target)
	if err != nil {
		return settings{}, err
	}
	s := settings{
		target:           t,
		refresh:          cmp.Or(o.Refresh, DefaultRefresh),
		timeout:          cmp.Or(o.Timeout, DefaultTimeout),
		retries:          DefaultRetries,
		maxBody:          cmp.Or(o.MaxRequestBody, DefaultMaxRequestBody),
		maxBuffered:      o.MaxBufferedBytes,
		maxResponse:      cmp.Or(o.MaxResponseBody, DefaultMaxResponseBody),
		keepaliveTime:    cmp.Or(o.KeepaliveTime, DefaultKeepaliveTime),
		keepaliveTimeout: cmp.Or(o.KeepaliveTimeout, DefaultKeepaliveTimeout),
		compression:      o.Compression,
		lbPolicy:         cmp.Or(o.LBPolicy, LBRoundRobin),
		retryAfter:       o.RetryAfter,
		health:           o.healthConfig(),
		logger:           o.Logger,
		metrics:          o.Metrics,
		backend:          o.BackendName,
		onDone:           o.OnDone,
		onAnswer:         o.OnAnswer,
		replaceHeaders:   o.ReplaceHeaders,
	}
	if o.Retries != nil {
		s.retries = *o.Retries
	}
	if s.compression == "none" { // the Caddyfile's spelling, and the error's
		s.compression = ""
	}
	if s.logger == nil {
		s.logger = zap.NewNop()
	}
	if s.backend == "" {
		s.backend = DefaultBackendName
	}
	if s.health != nil {
		s.health.fairShare = s.timeout / 2
	}
	if s.maxBuffered == 0 {
		s.maxBuffered = DefaultMaxBufferedBytes(s.maxBody)
	}
	if err := s.check(o); err != nil {
		return settings{}, err
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
	if need := MinBufferedBytes(s.maxBody); o.MaxBufferedBytes < 0 || (o.MaxBufferedBytes > 0 && o.MaxBufferedBytes < need) {
		errs = append(errs, fmt.Errorf("max_buffered_bytes %d: must be at least %d for max_request_body %d (a body's buffer grows by doubling, and the last two are held while it is read), or the largest body accepted could never be held", o.MaxBufferedBytes, need, s.maxBody))
	}
	if o.MaxResponseBody < 0 || s.maxResponse > 2<<30-MaxMessageOverhead {
		errs = append(errs, fmt.Errorf("max_response_body %d: must be 1 byte to 2 GiB-1 MiB", o.MaxResponseBody))
	}
	if o.KeepaliveTime < 0 || (o.KeepaliveTime > 0 && o.KeepaliveTime < MinKeepaliveTime) {
		errs = append(errs, fmt.Errorf("keepalive time %v: must be at least %v (Mimir's server closes connections that ping more often)", o.KeepaliveTime, MinKeepaliveTime))
	}
	if o.KeepaliveTimeout < 0 {
		errs = append(errs, fmt.Errorf("keepalive timeout %v: must be positive", o.KeepaliveTimeout))
	}
	if s.compression != "" && s.compression != "gzip" {
		errs = append(errs, fmt.Errorf("compression %q: must be gzip or none", s.compression))
	}
	if s.lbPolicy != LBRoundRobin && s.lbPolicy != LBLeastConn {
		errs = append(errs, fmt.Errorf("lb_policy %q: must be %s or %s", s.lbPolicy, LBRoundRobin, LBLeastConn))
	}
	errs = append(errs, o.checkHealth()...)
	if o.UnhealthyLatency > 0 && o.UnhealthyLatency >= s.timeout {
		errs = append(errs, fmt.Errorf("unhealthy_latency %v: must be below timeout %v (a call ends at timeout, so no call could count as late)", o.UnhealthyLatency, s.timeout))
	}
	if err := o.RetryAfter.Check(); err != nil {
		errs = append(errs, err)
	}
	if o.TLS != nil && (o.TLS.CertFile == "") != (o.TLS.KeyFile == "") {
		errs = append(errs, errors.New("tls: cert and key must be given together"))
	}
	if o.TLS != nil && o.TLS.CAFile != "" && o.TLS.InsecureSkipVerify {
		// insecure_skip_verify turns verification off, so the CA would be
		// silently unused: one of the two is a mistake.
		errs = append(errs, errors.New("tls: ca and insecure_skip_verify contradict each other (a CA is only used to verify the server)"))
	}
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
	if o.CertFile != "" { // with KeyFile: check made sure
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Key returns a string that is equal for two Options exactly when they would
// build interchangeable Handlers, for sharing one Handler (one ClientConn)
// between configurations, e.g. across config reloads. The TLS files are part
// of it by content, read now: after a certificate rotation the same paths
// give another key, hence new connections. Logger, Metrics and the hooks
// are not part of it: a shared Handler keeps the Metrics and hooks of its
// creator; UseLogger changes its Logger. RetryAfter and MaxBufferedBytes
// are not part of it either: only ServeHTTP reads them (a Priority brings
// its own Budget).
func (o Options) Key() (string, error) {
	s, err := o.settings()
	if err != nil {
		return "", err
	}
	var t TLSOptions
	if o.TLS != nil {
		t = *o.TLS
	}
	return fmt.Sprintf("%s|refresh=%v|timeout=%v|retries=%d|max_body=%d|max_response=%d|keepalive=%v/%v|compression=%s|backend=%s|tls=%t,%q,%q,%q,%q,%t,%s|lb=%s|health=%s",
		s.target, s.refresh, s.timeout, s.retries, s.maxBody, s.maxResponse, s.keepaliveTime, s.keepaliveTimeout,
		s.compression, s.backend, o.TLS != nil, t.CAFile, t.CertFile, t.KeyFile, t.ServerName, t.InsecureSkipVerify,
		filesDigest(t.CAFile, t.CertFile, t.KeyFile), s.lbPolicy, s.health.key()), nil
}

// filesDigest is a digest of the files' contents ("" for an empty name, a
// marker for an unreadable file, whose error New reports).
func filesDigest(names ...string) string {
	h := sha256.New()
	for _, name := range names {
		if name == "" {
			h.Write([]byte{0})
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			h.Write([]byte{1})
			continue
		}
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
