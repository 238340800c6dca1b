package access

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// maxCachedTokens bounds the verified JWTs one Guard remembers. Only
// tokens the provider signed get in, so the number in use is that of the
// clients pushing with their own token (each cached for its lifetime);
// past the bound, the oldest quarter's worth is let go and verified again
// when seen.
const maxCachedTokens = 10000

// maxCachedTokenBytes bounds what one cached token holds (its subject,
// policy names and note). A token whose policy claim is larger (a long list
// of groups) is verified at every request instead, so the cache holds at
// most maxCachedTokens × ~4 KiB (about 45 MiB) however large the tokens
// the provider signs.
const maxCachedTokenBytes = 4096

// NewCachedTokensGauge returns the gauge of verified JWTs remembered,
// metrics_gateway_auth_jwt_cache_entries, unregistered: the caller
// registers it (once) and passes it in Options.CachedTokens of every Guard.
func NewCachedTokensGauge() prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "metrics_gateway_auth_jwt_cache_entries",
		Help: "Verified JWTs remembered so that a client sending the same token with every request is checked once per key set (at most 10000 per configuration).",
	})
}

// tokenCache remembers the JWTs verified with the current key set, by the
// SHA-256 of the token (never the token), so that a client sending the
// same token with every push costs a hash and a lookup, not a signature
// check (tens of µs). An entry holds until the token's exp, and only while
// the current key set holds the same keys as the one that verified it
// (same generation) and was fetched less than keyMaxAge ago: a key the
// provider withdrew stops its tokens as soon as the set is fetched again,
// exactly as without the cache, while a fetch that finds the same keys
// (hourly, or forced by a token with an unknown key ID) keeps them. What the token's
// policy claim grants is looked up in the policies in force at each
// request, so policy changes apply at once.
type tokenCache struct {
	max   int
	gauge prometheus.Gauge // nil: not counted

	mu      sync.Mutex
	entries map[[32]byte]*cachedToken
	order   [][32]byte // insertion order, for letting the oldest go
	closed  bool       // the Guard closed: remember nothing more
}

// cachedToken is what verification found in a token.
type cachedToken struct {
	gen     uint64 // the generation of the key set that verified it
	expires time.Time
	subject string
	names   []string // the policy claim's policy names
	detail  string   // when not "": why the claim names no policy (missing, bad shape)

	// last is the result for the last snapshot of policies it was asked
	// for: a hit under the same policies costs a pointer compare, not the
	// union of several policies built again.
	last atomic.Pointer[snapResult]
}

// snapResult is a verifyResult under one snapshot of the policies, known
// by its number: a token remembered across reloads of the policy file must
// not keep each old snapshot in memory.
type snapResult struct {
	gen uint64
	res verifyResult
}

// size is about what e holds in memory: its strings and their headers.
func (e *cachedToken) size() int {
	n := len(e.subject) + len(e.detail) + 16*len(e.names)
	for _, name := range e.names {
		n += len(name)
	}
	return n
}

// result maps the token's policy names to the policies of snap.
func (e *cachedToken) result(snap *snapshot, claim string) verifyResult {
	if last := e.last.Load(); last != nil && last.gen == snap.gen {
		return last.res
	}
	res := e.resolve(snap, claim)
	e.last.Store(&snapResult{gen: snap.gen, res: res})
	return res
}

// resolve is result without the memo.
func (e *cachedToken) resolve(snap *snapshot, claim string) verifyResult {
	res := verifyResult{subject: e.subject, detail: e.detail}
	if e.detail != "" {
		return res
	}
	res.grant = snap.union(e.names)
	if res.grant == nil {
		shown := e.names
		if len(shown) > 5 {
			shown = shown[:5]
		}
		res.detail = fmt.Sprintf("oidc: claim %s names no configured policy (%d names: %q...)", claim, len(e.names), shown)
	}
	return res
}

func newTokenCache(max int, gauge prometheus.Gauge) *tokenCache {
	return &tokenCache{max: max, gauge: gauge, entries: map[[32]byte]*cachedToken{}}
}

// get returns the entry of key if it still holds at now with cur as the
// current key set.
func (c *tokenCache) get(key [32]byte, cur *jwks, now time.Time) *cachedToken {
	c.mu.Lock()
	e := c.entries[key]
	c.mu.Unlock()
	if e == nil || e.gen != cur.gen || now.Sub(cur.fetched) >= keyMaxAge || e.expires.Before(now) {
		return nil
	}
	return e
}

// put remembers e under key. When the cache is full, the entries that no
// longer hold go first, then the oldest, down to three quarters of max, so
// that the sweep runs once every max/4 insertions at most.
func (c *tokenCache) put(key [32]byte, e *cachedToken, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	before := len(c.entries)
	if _, ok := c.entries[key]; !ok {
		if len(c.entries) >= c.max {
			c.shrinkLocked(e.gen, now)
		}
		c.order = append(c.order, key)
	}
	c.entries[key] = e
	if c.gauge != nil {
		c.gauge.Add(float64(len(c.entries) - before))
	}
}

// shrinkLocked drops the entries that expired or were verified with
// another key set generation than cur, then the oldest, to at most 3/4 of max.
func (c *tokenCache) shrinkLocked(cur uint64, now time.Time) {
	keep := c.order[:0]
	for _, k := range c.order {
		if e := c.entries[k]; e.gen != cur || e.expires.Before(now) {
			delete(c.entries, k)
			continue
		}
		keep = append(keep, k)
	}
	if extra := len(keep) - c.max*3/4; extra > 0 {
		for _, k := range keep[:extra] {
			delete(c.entries, k)
		}
		keep = keep[:copy(keep, keep[extra:])]
	}
	clear(c.order[len(keep):])
	c.order = keep
}

// close forgets every entry (the Guard is replaced).
func (c *tokenCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gauge != nil {
		c.gauge.Sub(float64(len(c.entries)))
	}
	clear(c.entries)
	c.order = nil
	c.closed = true
}

// len returns the entries held.
func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
