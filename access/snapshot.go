package access

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sources of a policy in the status view.
const (
	SourceInline = "inline"
	SourceFile   = "file"
)

// result is a decision's outcome, the result label of the metric.
type result uint8

const (
	resultAllowed result = iota
	resultUnauthenticated
	resultForbidden
	resultBadRequest
	resultUnavailable
	numResults
)

var resultNames = [numResults]string{
	resultAllowed:         "allowed",
	resultUnauthenticated: "unauthenticated",
	resultForbidden:       "forbidden",
	resultBadRequest:      "bad_request",
	resultUnavailable:     "unavailable",
}

// counters holds a policy's counter of each result, looked up once so that
// a decision counts without hashing label values.
type counters [numResults]prometheus.Counter

func newCounters(vec *prometheus.CounterVec, policy string) *counters {
	if vec == nil {
		return nil
	}
	var c counters
	for i, name := range resultNames {
		c[i] = vec.WithLabelValues(policy, name)
	}
	return &c
}

// grant is what a credential grants: one compiled policy, or for an OIDC
// token that names several, their union.
type grant struct {
	name    string              // policy name; "a+b" for a union
	tenants map[string]struct{} // nil for a union (its parts have them)
	all     bool                // "*"; false for a union
	only    string              // the one tenant when exactly one (not "*") is granted
	scopes  scopeMask
	vec     *prometheus.CounterVec   // nil without metrics, or for a union
	ctr     atomic.Pointer[counters] // made at the first decision (counters)
	// parts are the policies of a union. A union grants a scope on a
	// tenant when one of its policies does: the scopes of one policy do
	// not extend to the tenants of another.
	parts []*grant
}

// counters returns the grant's counters, made at its first decision: a
// configuration of thousands of policies keeps no series, and nothing for
// the garbage collector to scan, for those that are not used. nil without
// metrics or for a union.
func (g *grant) counters() *counters {
	if g.vec == nil {
		return nil
	}
	if c := g.ctr.Load(); c != nil {
		return c
	}
	g.ctr.CompareAndSwap(nil, newCounters(g.vec, g.name))
	return g.ctr.Load()
}

// hasTenant reports whether the grant gives scope on tenant t; the caller
// has checked that it has the scope.
func (g *grant) hasTenant(t string, scope scopeMask) bool {
	if g.parts != nil {
		for _, p := range g.parts {
			if p.scopes&scope != 0 && p.hasTenant(t, scope) {
				return true
			}
		}
		return false
	}
	if g.all {
		return true
	}
	_, ok := g.tenants[t]
	return ok
}

// setOnly sets only from all and tenants.
func (g *grant) setOnly() {
	g.only = ""
	if !g.all && len(g.tenants) == 1 {
		for t := range g.tenants {
			g.only = t
		}
	}
}

// compiledPolicy is a validated policy ready for decisions.
type compiledPolicy struct {
	grant
	source  string
	pos     int // in the snapshot's order
	cfg     Policy
	expires []time.Time // of each token; zero: never
}

// tokenEntry is what the map of token hashes holds.
type tokenEntry struct {
	policy  *compiledPolicy
	expires time.Time // zero: never
}

// snapshot is an immutable set of policies; the guard swaps whole snapshots.
type snapshot struct {
	gen      uint64 // unique to this snapshot (snapshotGen)
	byHash   map[[32]byte]tokenEntry
	byName   map[string]*compiledPolicy
	policies []*compiledPolicy // inline ones first, then the file's, in order
}

// snapshotGen numbers the snapshots: what remembers a result for one keeps
// its number, not the snapshot (thousands of policies) itself.
var snapshotGen atomic.Uint64

// compile builds a snapshot from validated policies (Validate and LoadFile
// have checked them: compile does not check again).
func compile(inline, file []Policy, vec *prometheus.CounterVec) *snapshot {
	s := &snapshot{
		gen:    snapshotGen.Add(1),
		byHash: map[[32]byte]tokenEntry{},
		byName: map[string]*compiledPolicy{},
	}
	add := func(ps []Policy, source string) {
		for _, p := range ps {
			cp := &compiledPolicy{
				grant: grant{
					name:    p.Name,
					tenants: map[string]struct{}{},
					vec:     vec,
				},
				source: source,
				pos:    len(s.policies),
				cfg:    p,
			}
			for _, t := range p.Tenants {
				if t == AllTenants {
					cp.all = true
				} else {
					cp.tenants[t] = struct{}{}
				}
			}
			cp.setOnly()
			for _, sc := range p.Scopes {
				cp.scopes |= Scope(sc).bit()
			}
			for _, t := range p.Tokens {
				sum, _ := parseHash(t.Hash)
				exp, _ := parseExpires(t.Expires)
				cp.expires = append(cp.expires, exp)
				s.byHash[sum] = tokenEntry{policy: cp, expires: exp}
			}
			s.byName[p.Name] = cp
			s.policies = append(s.policies, cp)
		}
	}
	add(inline, SourceInline)
	add(file, SourceFile)
	return s
}

// union returns the grant of the configured policies among names, in the
// snapshot's order, or nil when names has none. Only the named policies
// are looked at: names come from a token, one per request.
func (s *snapshot) union(names []string) *grant {
	var parts []*compiledPolicy
	for _, n := range names {
		if p, ok := s.byName[n]; ok {
			parts = append(parts, p)
		}
	}
	if len(parts) == 0 {
		return nil
	}
	slices.SortFunc(parts, func(a, b *compiledPolicy) int { return a.pos - b.pos })
	parts = slices.Compact(parts)
	if len(parts) == 1 {
		return &parts[0].grant
	}
	// The tenants are the parts' (hasTenant asks them); only is the one
	// tenant when every part grants just that one.
	u := &grant{only: parts[0].only}
	for i, p := range parts {
		if i > 0 {
			u.name += "+"
		}
		u.name += p.name
		u.scopes |= p.scopes
		if p.only != u.only {
			u.only = ""
		}
		u.parts = append(u.parts, &p.grant)
	}
	return u
}
