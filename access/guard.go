package access

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// DefaultFileCheckInterval is how often the policy file is read again when
// Options.FileCheckInterval is zero.
const DefaultFileCheckInterval = 2 * time.Second

// MaxFileCheckInterval is the longest Options.FileCheckInterval accepted.
const MaxFileCheckInterval = 10 * time.Second

// Options are the Guard's runtime dependencies. The zero value is usable.
type Options struct {
	// Logger receives reload and OIDC key-fetch events. Default: none.
	Logger *zap.Logger

	// HTTPClient makes the OIDC discovery and key-set requests. Default: a
	// client with a 10 s timeout.
	HTTPClient *http.Client

	// Now is the clock for token expiry, JWT validity and the key refetch
	// limit. Default: time.Now.
	Now func() time.Time

	// FileCheckInterval is how often Config.File is read again; at most
	// MaxFileCheckInterval. Default: DefaultFileCheckInterval.
	FileCheckInterval time.Duration

	// Metrics, when set, counts every decision. Make it with
	// NewRequestsCounter and register it where you like. Default: none.
	Metrics *prometheus.CounterVec

	// CachedTokens, when set, counts the verified JWTs the Guards
	// remember. Make it with NewCachedTokensGauge. Default: none.
	CachedTokens prometheus.Gauge
}

// Guard decides who may do what on which tenant. Build one with New; it is
// safe for concurrent use. Close it when its configuration is replaced.
type Guard struct {
	cfg       Config
	challenge string // the WWW-Authenticate value of 401 answers
	log       *zap.Logger
	now       func() time.Time
	metrics   *prometheus.CounterVec
	anonCtr   *counters // the counters of policy ""
	unionCtr  *counters // of policy "+" (severalPolicies); nil without oidc
	interval  time.Duration

	snap atomic.Pointer[snapshot]
	oidc *oidcVerifier // nil without OIDC

	mu       sync.Mutex // guards the file state below
	fileSum  [32]byte   // content hash of the last file read
	haveSum  bool
	lastLoad time.Time
	lastErr  string
	checks   atomic.Int64 // file checks done, for tests

	ownClient *http.Client    // the OIDC client New made, if it did
	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	done      chan struct{} // closed when the file watcher has stopped
	closeOnce sync.Once
}

// NewRequestsCounter returns the counter of decisions,
// metrics_gateway_auth_requests_total{policy, result}, unregistered: the
// caller registers it (once) and passes it in Options.Metrics of every
// Guard. policy is a configured policy name, "" before a credential is
// matched to a policy, or "+" for an OIDC token naming several policies, so
// the values are bounded by the configuration, never by what a client or an
// identity provider sends. result is allowed,
// unauthenticated, forbidden, bad_request or unavailable (the OIDC
// provider's keys could not be fetched).
func NewRequestsCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "metrics_gateway_auth_requests_total",
		Help: "Requests checked against the access policies, by policy and result (allowed, unauthenticated, forbidden, bad_request, unavailable).",
	}, []string{"policy", "result"})
}

// New validates cfg, reads its policy file (an error when it cannot be read
// or is invalid) and returns a Guard. With a file, a goroutine checks it
// every Options.FileCheckInterval until Close. With OIDC, nothing is fetched
// here: discovery and keys are fetched with the first JWT, so an identity
// provider that is down does not stop the gateway from starting.
func New(cfg Config, opts Options) (*Guard, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	interval := opts.FileCheckInterval
	switch {
	case interval == 0:
		interval = DefaultFileCheckInterval
	case interval < 0 || interval > MaxFileCheckInterval:
		return nil, fmt.Errorf("access: file check interval %v is not between 0 and %v", interval, MaxFileCheckInterval)
	}
	realm := cfg.Realm
	if realm == "" {
		realm = DefaultRealm
	}
	g := &Guard{
		cfg:       cfg,
		challenge: `Basic realm="` + realm + `"`,
		log:       opts.Logger,
		now:       opts.Now,
		metrics:   opts.Metrics,
		anonCtr:   newCounters(opts.Metrics, ""),
		interval:  interval,
		done:      make(chan struct{}),
	}
	if cfg.OIDC != nil {
		g.unionCtr = newCounters(opts.Metrics, severalPolicies)
	}
	if g.log == nil {
		g.log = zap.NewNop()
	}
	if cfg.OIDC != nil && cfg.OIDC.Audience == "" {
		g.log.Warn("access_policies: oidc without audience accepts the tokens the issuer makes for any client, when their policy claim names a policy",
			zap.String("issuer", cfg.OIDC.Issuer))
	}
	if g.now == nil {
		g.now = time.Now
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())

	var filePolicies []Policy
	if cfg.File != "" {
		data, err := cfg.readFile()
		if err == nil {
			filePolicies, err = cfg.parseFile(data)
		}
		if err != nil {
			g.cancel()
			return nil, err
		}
		g.fileSum, g.haveSum = sha256.Sum256(data), true
	}
	g.install(compile(cfg.Policies, filePolicies, g.metrics))

	if cfg.OIDC != nil {
		client := opts.HTTPClient
		if client == nil {
			client = &http.Client{Timeout: 10 * time.Second}
			g.ownClient = client
		}
		g.oidc = newOIDCVerifier(g.ctx, *cfg.OIDC, client, g.now, g.log, opts.CachedTokens)
	}

	if cfg.File != "" {
		go g.watch()
	} else {
		close(g.done)
	}
	return g, nil
}

// install makes s the policies in force.
func (g *Guard) install(s *snapshot) {
	trackPolicies(g.metrics, g.snap.Swap(s), s)
	g.mu.Lock()
	g.lastLoad = g.now()
	g.lastErr = ""
	g.mu.Unlock()
	now := g.now()
	for _, p := range s.policies {
		expired := 0
		for _, e := range p.expires {
			if !e.IsZero() && !now.Before(e) {
				expired++
			}
		}
		if expired > 0 {
			g.log.Warn("access policy has expired tokens",
				zap.String("policy", p.name), zap.Int("expired", expired), zap.Int("tokens", len(p.expires)))
		}
	}
}

// Close stops the file watcher and any OIDC key fetch under way. It may be
// called more than once. Decisions made after Close still work, with the
// policies last loaded.
func (g *Guard) Close() error {
	g.closeOnce.Do(func() {
		g.cancel()
		<-g.done // no install after this
		trackPolicies(g.metrics, g.snap.Load(), nil)
		if g.oidc != nil {
			g.oidc.keys.waitFetch() // cancelled with g.ctx
			g.oidc.cache.close()
		}
		if g.ownClient != nil {
			g.ownClient.CloseIdleConnections()
		}
	})
	return nil
}

// watch checks the file every interval until Close.
func (g *Guard) watch() {
	defer close(g.done)
	t := time.NewTicker(g.interval)
	defer t.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
			g.checkFile()
		}
	}
}

// checkFile reads the policy file and installs its policies when its content
// changed since the last read. Content, not modification time or file
// events: a Kubernetes volume swaps a symlink, and the same content written
// again changes nothing. A file that cannot be read or is invalid leaves the
// policies in force; its error is logged once (until it changes).
func (g *Guard) checkFile() {
	defer g.checks.Add(1)
	data, err := g.cfg.readFile()
	if err != nil {
		g.mu.Lock()
		g.haveSum = false // whatever comes next is read afresh
		g.mu.Unlock()
		g.fail(err)
		return
	}
	sum := sha256.Sum256(data)
	g.mu.Lock()
	same := g.haveSum && sum == g.fileSum
	g.fileSum, g.haveSum = sum, true
	g.mu.Unlock()
	if same {
		return
	}
	policies, err := g.cfg.parseFile(data)
	if err != nil {
		g.fail(err)
		return
	}
	s := compile(g.cfg.Policies, policies, g.metrics)
	g.install(s)
	g.log.Info("access policy file reloaded",
		zap.String("file", g.cfg.File), zap.Int("file_policies", len(policies)), zap.Int("tokens", len(s.byHash)))
}

// fail records a failed file check, logging it when it differs from the
// last one.
func (g *Guard) fail(err error) {
	msg := err.Error()
	g.mu.Lock()
	repeated := msg == g.lastErr
	g.lastErr = msg
	g.mu.Unlock()
	if !repeated {
		g.log.Error("access policy file not loaded; the policies in force stay", zap.String("file", g.cfg.File), zap.Error(err))
	}
}

// Status is the state of a Guard for an admin view. It never holds a token
// or a hash.
type Status struct {
	// File is Config.File.
	File string `json:"file,omitempty"`
	// LastLoad is when the policies in force were loaded.
	LastLoad time.Time `json:"last_load"`
	// LastError is why the file's current content is not in force ("" when
	// it is).
	LastError string `json:"last_error,omitempty"`
	// Policies are the policies in force: inline ones first.
	Policies []PolicyStatus `json:"policies"`
	// OIDC is the state of the OIDC provider's keys; nil without OIDC.
	OIDC *OIDCStatus `json:"oidc,omitempty"`
}

// PolicyStatus describes one policy.
type PolicyStatus struct {
	Name       string        `json:"name"`
	Source     string        `json:"source"` // "inline" or "file"
	Tenants    []string      `json:"tenants"`
	Scopes     []string      `json:"scopes"`
	TokenCount int           `json:"token_count"`
	Tokens     []TokenStatus `json:"tokens"` // in configuration order
}

// TokenStatus describes one static token, without its hash.
type TokenStatus struct {
	Expires *time.Time `json:"expires,omitempty"` // nil: never
	Expired bool       `json:"expired"`
}

// OIDCStatus describes the OIDC provider's keys.
type OIDCStatus struct {
	Issuer      string    `json:"issuer"`
	Audience    string    `json:"audience,omitempty"`
	PolicyClaim string    `json:"policy_claim"`
	JWKSURI     string    `json:"jwks_uri,omitempty"`   // "" until discovered
	Keys        int       `json:"keys"`                 // signing keys cached
	LastFetch   time.Time `json:"last_fetch,omitzero"`  // of the keys in use
	LastError   string    `json:"last_error,omitempty"` // of the last failed fetch
	Fetches     int       `json:"fetches"`              // key-set fetch attempts
	// CachedTokens is the verified JWTs remembered (by hash) until their
	// exp or the next key-set fetch.
	CachedTokens int `json:"cached_tokens"`
}

// Status returns the Guard's state.
func (g *Guard) Status() Status {
	s := g.snap.Load()
	now := g.now()
	g.mu.Lock()
	st := Status{File: g.cfg.File, LastLoad: g.lastLoad, LastError: g.lastErr}
	g.mu.Unlock()
	st.Policies = make([]PolicyStatus, 0, len(s.policies))
	for _, p := range s.policies {
		ps := PolicyStatus{
			Name:       p.name,
			Source:     p.source,
			Tenants:    append([]string(nil), p.cfg.Tenants...),
			Scopes:     append([]string(nil), p.cfg.Scopes...),
			TokenCount: len(p.expires),
			Tokens:     make([]TokenStatus, len(p.expires)),
		}
		for i, e := range p.expires {
			if !e.IsZero() {
				e := e
				ps.Tokens[i] = TokenStatus{Expires: &e, Expired: !now.Before(e)}
			}
		}
		st.Policies = append(st.Policies, ps)
	}
	if g.oidc != nil {
		o := g.oidc.status()
		st.OIDC = &o
	}
	return st
}

// errClosed is returned by key fetches after Close.
var errClosed = errors.New("access: guard closed")
