package access

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Key-set fetching limits.
const (
	// minRefetchInterval is the least time between two fetches of the
	// provider's keys (discovery included): a token whose key ID is not
	// cached triggers a fetch, and such tokens cost anyone nothing to make.
	minRefetchInterval = 10 * time.Second
	// keyMaxAge is the age after which cached keys are fetched again with
	// the next JWT (keeping them if that fails), so that a key the provider
	// withdrew stops being accepted.
	keyMaxAge = time.Hour
	// staleFetchWait is the most a JWT that finds the keys stale waits for
	// their fetch before it is checked with the keys in hand.
	staleFetchWait = 500 * time.Millisecond
	// fetchTimeout bounds one discovery plus key-set fetch.
	fetchTimeout = 15 * time.Second
	// maxDocument bounds a discovery document or key set.
	maxDocument = 1 << 20
)

// signingAlgs are the JWS algorithms accepted: asymmetric ones only (no
// "none", no HMAC whose secret a public key could be mistaken for).
var signingAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.EdDSA,
}

// oidcVerifier checks JWTs with go-oidc over a key set of our own, whose
// fetches are rate-limited (go-oidc's RemoteKeySet fetches again for every
// unknown key ID).
type oidcVerifier struct {
	claim    string
	verifier *oidc.IDTokenVerifier
	keys     *keySet
	cache    *tokenCache
}

func newOIDCVerifier(ctx context.Context, cfg OIDCConfig, client *http.Client, now func() time.Time, log *zap.Logger, cached prometheus.Gauge) *oidcVerifier {
	claim := cfg.PolicyClaim
	if claim == "" {
		claim = DefaultPolicyClaim
	}
	ks := &keySet{
		issuer:   cfg.Issuer,
		audience: cfg.Audience,
		claim:    claim,
		client:   client,
		now:      now,
		log:      log.With(zap.String("issuer", cfg.Issuer)),
		ctx:      ctx,
		sem:      make(chan struct{}, 1),
	}
	if set, ok := lastKeys.Load(cfg.Issuer); ok {
		ks.cur.Store(set.(*jwks)) // still aged from its fetch: keyMaxAge holds
	}
	algs := make([]string, len(signingAlgs))
	for i, a := range signingAlgs {
		algs[i] = string(a)
	}
	v := oidc.NewVerifier(cfg.Issuer, ks, &oidc.Config{
		ClientID:             cfg.Audience,
		SkipClientIDCheck:    cfg.Audience == "",
		SupportedSigningAlgs: algs,
		Now:                  now,
	})
	return &oidcVerifier{claim: claim, verifier: v, keys: ks, cache: newTokenCache(maxCachedTokens, cached)}
}

// verifyResult is the outcome of checking a JWT.
type verifyResult struct {
	grant       *grant // nil: the token names no configured policy
	subject     string
	invalid     bool   // the token is invalid
	unavailable bool   // the keys could not be fetched: the token could not be checked
	detail      string // for the server's log
}

// fetchNote lets the key set tell verify, through go-oidc (which keeps only
// the text of the key set's error), that keys could not be fetched, or
// which key set verified the signature.
type fetchNote struct {
	unavailable bool
	keys        *jwks
}

type fetchNoteKey struct{}

// verify checks a JWT (signature, iss, aud when configured, exp, nbf) and
// maps its policy claim to the policies of snap. A token verified before
// with the current key set is taken from the cache.
func (v *oidcVerifier) verify(ctx context.Context, token []byte, snap *snapshot) verifyResult {
	now := v.keys.now()
	key := sha256.Sum256(token)
	if cur := v.keys.cur.Load(); cur != nil {
		if e := v.cache.get(key, cur, now); e != nil {
			return e.result(snap, v.claim)
		}
	}
	note := &fetchNote{}
	ctx = context.WithValue(ctx, fetchNoteKey{}, note)
	tok, err := v.verifier.Verify(ctx, string(token))
	if err != nil {
		if note.unavailable {
			return verifyResult{unavailable: true, detail: err.Error()}
		}
		return verifyResult{invalid: true, detail: err.Error()}
	}
	var claims map[string]json.RawMessage
	if err := tok.Claims(&claims); err != nil {
		return verifyResult{invalid: true, detail: "oidc: claims: " + err.Error()}
	}
	e := &cachedToken{expires: tok.Expiry, subject: tok.Subject}
	if val, ok := claimValue(claims, v.claim); !ok {
		e.detail = fmt.Sprintf("oidc: the token has no %s claim", v.claim)
	} else if e.names, err = policyNames(val); err != nil {
		e.detail = fmt.Sprintf("oidc: claim %s: %v", v.claim, err)
	}
	if note.keys != nil && e.size() <= maxCachedTokenBytes {
		e.gen = note.keys.gen
		v.cache.put(key, e, now)
	}
	return e.result(snap, v.claim)
}

// claimValue returns the claim called name, or, when there is none and name
// has dots, the value at that path through nested objects
// ("realm_access.roles").
func claimValue(claims map[string]json.RawMessage, name string) (json.RawMessage, bool) {
	if v, ok := claims[name]; ok {
		return v, true
	}
	if !strings.Contains(name, ".") {
		return nil, false
	}
	cur := claims
	parts := strings.Split(name, ".")
	for i, p := range parts {
		v, ok := cur[p]
		if !ok {
			return nil, false
		}
		if i == len(parts)-1 {
			return v, true
		}
		var next map[string]json.RawMessage
		if json.Unmarshal(v, &next) != nil {
			return nil, false
		}
		cur = next
	}
	return nil, false
}

// policyNames reads a policy claim: a string or a list (whose items that
// are not strings are ignored).
func policyNames(raw json.RawMessage) ([]string, error) {
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var list []any
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, errors.New("neither a string nor a list of strings")
	}
	names := make([]string, 0, len(list))
	for _, item := range list {
		if s, ok := item.(string); ok {
			names = append(names, s)
		}
	}
	return names, nil
}

func (v *oidcVerifier) status() OIDCStatus {
	k := v.keys
	st := OIDCStatus{Issuer: k.issuer, Audience: k.audience, PolicyClaim: k.claim, CachedTokens: v.cache.len()}
	if cur := k.cur.Load(); cur != nil {
		st.Keys, st.LastFetch = len(cur.keys), cur.fetched
	}
	k.mu.Lock()
	st.JWKSURI, st.LastError, st.Fetches = k.statusURI, k.lastErr, k.fetches
	k.mu.Unlock()
	return st
}

// keySet implements oidc.KeySet over the provider's JWKS: the current set
// only (bounded), fetched (with discovery first) when a token's key ID is
// not in it, when it is older than keyMaxAge, or when there is none yet, at
// most once every minRefetchInterval by the clock. One fetch runs at a time;
// other tokens needing one wait for it (or their request's end).
type keySet struct {
	issuer, audience, claim string
	client                  *http.Client
	now                     func() time.Time
	log                     *zap.Logger
	ctx                     context.Context // the guard's: cancelled by Close

	cur atomic.Pointer[jwks] // nil until the first good fetch

	signatureChecks atomic.Int64 // tokens whose signature was checked (not taken from the cache)

	sem         chan struct{} // held while fetching; guards the fields below
	jwksURI     string        // from discovery; "" to discover again
	lastAttempt time.Time

	mu        sync.Mutex // guards the status fields below
	statusURI string
	lastErr   string
	fetches   int
}

// jwks is one fetched key set.
type jwks struct {
	keys    []jose.JSONWebKey
	fetched time.Time
	// gen is the same for sets of the same keys: a fetch that finds the
	// keys unchanged (the hourly one, or one forced by an unknown key ID)
	// keeps the tokens verified with the set before.
	gen uint64
}

// keyGens numbers the distinct key sets.
var keyGens atomic.Uint64

// setGen gives set the generation of prev when both hold the same keys
// (key IDs and public keys, in order), a new one otherwise.
func setGen(set, prev *jwks) {
	if prev != nil && sameKeys(set.keys, prev.keys) {
		set.gen = prev.gen
		return
	}
	set.gen = keyGens.Add(1)
}

func sameKeys(a, b []jose.JSONWebKey) bool {
	return slices.EqualFunc(a, b, func(x, y jose.JSONWebKey) bool {
		if x.KeyID != y.KeyID {
			return false
		}
		tx, errX := x.Thumbprint(crypto.SHA256)
		ty, errY := y.Thumbprint(crypto.SHA256)
		return errX == nil && errY == nil && bytes.Equal(tx, ty)
	})
}

// errNoKey is a token whose key ID is in the set but whose signature no key
// verifies, or whose key ID is not in the set.
var errNoKey = errors.New("no key of the provider verifies the signature")

// verify checks jws's signature with the set's keys. kidKnown reports
// whether the set has a key with the token's (non-empty) key ID.
func (s *jwks) verify(jws *jose.JSONWebSignature) (payload []byte, kidKnown bool, err error) {
	if s == nil {
		return nil, false, errNoKey
	}
	h := jws.Signatures[0].Header
	for i := range s.keys {
		k := &s.keys[i]
		if h.KeyID != "" && k.KeyID != h.KeyID {
			continue
		}
		if k.Algorithm != "" && k.Algorithm != h.Algorithm {
			continue
		}
		kidKnown = kidKnown || h.KeyID != ""
		if p, err := jws.Verify(k); err == nil {
			return p, true, nil
		}
	}
	return nil, kidKnown, errNoKey
}

// VerifySignature implements oidc.KeySet. go-oidc has checked the
// algorithm; the claims are checked by go-oidc after this.
func (k *keySet) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	k.signatureChecks.Add(1)
	jws, err := jose.ParseSigned(raw, signingAlgs)
	if err != nil {
		return nil, fmt.Errorf("malformed jwt: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("jwt must have exactly one signature")
	}
	cur := k.cur.Load()
	if cur != nil && k.now().Sub(cur.fetched) >= keyMaxAge {
		// Stale: fetch again if no fetch is under way and the limit
		// allows, so that a withdrawn key stops with this token; wait for
		// it at most staleFetchWait (a push has no deadline of its own,
		// and a slow provider must not hold up tokens whose keys are in
		// hand). On failure, or once the wait is over, the old keys stay
		// until the fetch ends.
		select {
		case k.sem <- struct{}{}:
			if k.cur.Load() != cur {
				<-k.sem
				break
			}
			wait := time.NewTimer(staleFetchWait)
			select {
			case <-k.startFetch(cur):
			case <-ctx.Done():
			case <-wait.C:
			}
			wait.Stop()
		default:
		}
		cur = k.cur.Load()
	}
	payload, kidKnown, err := cur.verify(jws)
	if err == nil {
		noteKeys(ctx, cur)
	}
	if err == nil || kidKnown {
		return payload, err
	}
	// The key ID is not in the set (or there is no set yet): the provider
	// may have rotated its keys.
	next, err := k.refresh(ctx, cur)
	if err != nil {
		if errors.Is(err, errKeysUnavailable) || ctx.Err() != nil {
			markUnavailable(ctx)
		}
		return nil, err
	}
	payload, _, err = next.verify(jws)
	if err == nil {
		noteKeys(ctx, next)
	} else if next == cur && issuedBetween(jws, cur.fetched.Add(-issuerClockSkew), k.now().Add(issuerClockSkew)) {
		// The key ID is unknown as of a fetch moments ago, too recent to
		// fetch again, but the token is newer than that fetch: its key
		// may have been published since. It cannot be checked until the
		// next fetch (503, which a client retries), rather than found
		// invalid (401, which drops data).
		markUnavailable(ctx)
	}
	return payload, err
}

// issuerClockSkew is how far the provider's clock (a token's iat) may be
// behind the gateway's (a key set's fetch time). Small: a token of a
// withdrawn key issued longer ago than this before a fetch is invalid
// (401) at once.
const issuerClockSkew = 5 * time.Second

// issuedBetween reports whether the token's iat (not yet verified) is from
// since (to the second) to until: a token claiming to be from the future
// is not taken for one of a new key.
func issuedBetween(jws *jose.JSONWebSignature, since, until time.Time) bool {
	var claims struct {
		IssuedAt *float64 `json:"iat"`
	}
	if json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &claims) != nil || claims.IssuedAt == nil {
		return false
	}
	iat := time.Unix(int64(*claims.IssuedAt), 0)
	return !iat.Before(since.Truncate(time.Second)) && !iat.After(until)
}

// errKeysUnavailable is a fetch of the key set that failed, or a token that
// cannot wait for one: the token could not be checked.
var errKeysUnavailable = errors.New("the provider's keys are unavailable")

// fetchResult is the outcome of one fetch.
type fetchResult struct {
	set *jwks
	err error
}

// refresh fetches the key set unless another fetch replaced seen meanwhile
// or the rate limit forbids it; it returns the set to use. It waits for the
// fetch at most until ctx ends; the fetch itself goes on.
func (k *keySet) refresh(ctx context.Context, seen *jwks) (*jwks, error) {
	select {
	case k.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the provider's keys: %w", ctx.Err())
	}
	if cur := k.cur.Load(); cur != seen {
		<-k.sem
		return cur, nil
	}
	select {
	case r := <-k.startFetch(seen):
		return r.set, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the provider's keys: %w", ctx.Err())
	}
}

// startFetch runs refreshLocked in a goroutine of its own, which releases
// sem (held by the caller) when done: a request waits for a fetch only as
// long as its own context allows. One fetch runs at a time (sem); Close
// waits for it by taking sem.
func (k *keySet) startFetch(seen *jwks) <-chan fetchResult {
	done := make(chan fetchResult, 1)
	go func() {
		set, err := k.refreshLocked(seen)
		<-k.sem // before the waiter goes on: its next token may need a fetch
		done <- fetchResult{set, err}
	}()
	return done
}

// refreshLocked fetches the key set; the caller holds sem.
func (k *keySet) refreshLocked(seen *jwks) (*jwks, error) {
	now := k.now()
	if !k.lastAttempt.IsZero() && now.Sub(k.lastAttempt) < minRefetchInterval {
		k.mu.Lock()
		last := k.lastErr
		k.mu.Unlock()
		if seen == nil || last != "" {
			// No keys at all, or the last fetch failed moments ago: the
			// token's key may well be one the provider published since
			// the keys in hand; it cannot be checked now (503, which a
			// client retries), not found invalid (401, which drops data).
			return nil, fmt.Errorf("%w (next fetch in at most %v): %s", errKeysUnavailable, minRefetchInterval, last)
		}
		return seen, nil // the key ID is unknown as of a fetch that worked moments ago
	}
	k.lastAttempt = now
	set, err := k.fetch()
	k.mu.Lock()
	k.fetches++
	if err != nil {
		k.lastErr = err.Error()
	} else {
		k.lastErr = ""
	}
	k.mu.Unlock()
	if err != nil {
		k.log.Warn("cannot fetch the OIDC provider's keys", zap.Error(err))
		return nil, fmt.Errorf("%w: %v", errKeysUnavailable, err)
	}
	kids := make([]string, len(set.keys))
	for i, key := range set.keys {
		kids[i] = key.KeyID
	}
	k.log.Info("fetched the OIDC provider's keys", zap.Strings("kids", kids))
	setGen(set, k.cur.Load())
	k.cur.Store(set)
	lastKeys.Store(k.issuer, set)
	return set, nil
}

// lastKeys holds each issuer's last key set fetched, by issuer URL, so
// that the Guard of a reloaded configuration starts with the keys its
// predecessor had: a reload while the provider is down does not make every
// JWT unverifiable, and costs no fetch. One entry per issuer ever
// configured.
var lastKeys sync.Map // string → *jwks

// noteKeys tells verify which key set verified the token.
func noteKeys(ctx context.Context, set *jwks) {
	if n, ok := ctx.Value(fetchNoteKey{}).(*fetchNote); ok {
		n.keys = set
	}
}

func markUnavailable(ctx context.Context) {
	if n, ok := ctx.Value(fetchNoteKey{}).(*fetchNote); ok {
		n.unavailable = true
	}
}

// fetch discovers the key set's URI if needed and fetches it.
func (k *keySet) fetch() (*jwks, error) {
	ctx, cancel := context.WithTimeout(k.ctx, fetchTimeout)
	defer cancel()
	if k.ctx.Err() != nil {
		return nil, errClosed
	}
	if k.jwksURI == "" {
		uri, err := k.discover(ctx)
		if err != nil {
			return nil, err
		}
		k.jwksURI = uri
		k.mu.Lock()
		k.statusURI = uri
		k.mu.Unlock()
	}
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := k.getJSON(ctx, k.jwksURI, &raw); err != nil {
		k.jwksURI = "" // discover again next time: the URI may have moved
		return nil, fmt.Errorf("oidc: key set: %w", err)
	}
	set := &jwks{fetched: k.now()}
	for _, m := range raw.Keys {
		var key jose.JSONWebKey
		if err := json.Unmarshal(m, &key); err != nil {
			continue // a key type or algorithm go-jose does not know
		}
		if key.Use != "" && key.Use != "sig" {
			continue
		}
		if !key.IsPublic() {
			key = key.Public()
		}
		switch key.Key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
		default:
			continue // symmetric, or nothing
		}
		if key.Valid() {
			set.keys = append(set.keys, key)
		}
	}
	if len(set.keys) == 0 {
		return nil, fmt.Errorf("oidc: key set %s has no usable signing key", k.jwksURI)
	}
	return set, nil
}

// discover reads the provider's discovery document and returns its jwks_uri.
func (k *keySet) discover(ctx context.Context) (string, error) {
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	u := strings.TrimSuffix(k.issuer, "/") + "/.well-known/openid-configuration"
	if err := k.getJSON(ctx, u, &doc); err != nil {
		return "", fmt.Errorf("oidc: discovery: %w", err)
	}
	if doc.Issuer != k.issuer {
		return "", fmt.Errorf("oidc: discovery: the document's issuer %q is not the configured %q", doc.Issuer, k.issuer)
	}
	if p, err := url.Parse(doc.JWKSURI); err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
		return "", fmt.Errorf("oidc: discovery: jwks_uri %q is not an absolute http or https URL", doc.JWKSURI)
	}
	return doc.JWKSURI, nil
}

// getJSON GETs a JSON document of at most maxDocument bytes.
func (k *keySet) getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument+1))
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	if len(body) > maxDocument {
		return fmt.Errorf("GET %s: larger than %d bytes", u, maxDocument)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	return nil
}

// waitFetch waits for the fetch under way, if any, to be done with the key
// set: it takes sem and gives it back. (A WaitGroup would do, were it not
// that requests still in flight may start a fetch while Close waits.)
func (k *keySet) waitFetch() {
	k.sem <- struct{}{}
	<-k.sem
}
