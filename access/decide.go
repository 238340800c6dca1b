package access

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/grafana/dskit/tenant"

	"github.com/metrics-gateway/metrics_gateway/orgid"
)

// Header keys as they are stored in an http.Header.
const (
	authorizationKey = "Authorization"
	tenantKey        = "X-Scope-Orgid" // http.CanonicalHeaderKey(orgid.Header)
)

// credBuf is the size of the stack buffers a credential is decoded and
// hashed in; longer credentials (JWTs, mostly) take a heap buffer.
const credBuf = 256

// Decision is the answer for one request.
type Decision struct {
	// Status is 0 when the request may go on, else the HTTP status to
	// answer with: 400 (malformed request: tenant missing or invalid,
	// several tenants where one is needed, several Authorization headers),
	// 401 (no, unknown, expired or invalid credential), 403 (the policy
	// does not grant the scope or a tenant) or 503 (a JWT could not be
	// checked: the OIDC provider's keys could not be fetched).
	Status int

	// Message is a one-line explanation for the client ("" when allowed).
	// It never contains the credential or its hash.
	Message string

	// Detail says more for the server's log, never a secret either: such
	// as why a JWT was refused.
	Detail string

	// Policy is the name of the credential's policy ("a+b" for an OIDC
	// token naming several), "" when no credential matched a policy.
	Policy string

	// Subject is the `sub` claim of an OIDC token, "" for static tokens.
	Subject string

	// Tenant is the X-Scope-OrgID value to send upstream when allowed: one
	// tenant, or several joined with "|".
	Tenant string

	// WWWAuthenticate is the challenge to send with a 401 answer, such as
	// `Basic realm="metrics_gateway"`; "" for other answers.
	WWWAuthenticate string

	ctr    *counters // counters of the policy, nil when looked up by name
	result result
}

// Allowed reports whether the request may go on.
func (d Decision) Allowed() bool { return d.Status == 0 }

// Result is the outcome as the metric's result label names it: allowed,
// unauthenticated, forbidden, bad_request or unavailable.
func (d Decision) Result() string { return resultNames[d.result] }

// Apply prepares an allowed request for the upstream: it sets exactly one
// X-Scope-OrgID (the decided tenant, replacing whatever the client sent) and
// removes the Authorization header, so the credential goes no further. It
// does nothing to a request that was not allowed. A caller that does not use
// Apply must do the same.
func (d Decision) Apply(r *http.Request) {
	if !d.Allowed() {
		return
	}
	delete(r.Header, authorizationKey)
	r.Header[tenantKey] = []string{d.Tenant} // tenantKey is canonical: no key to build
}

// Decide decides whether request r may act with scope on the tenant(s) it
// names. It reads r's headers and does not change r (see Decision.Apply).
// It counts the decision in Options.Metrics. A JWT may need the OIDC
// provider's keys fetched first; that waits at most as long as r's context.
//
// Credentials: `Authorization: Basic` with the tenant as username (one
// tenant, or several joined with "|") and the token as password, or
// `Authorization: Bearer <token>` with the tenant from X-Scope-OrgID. When
// the tenant is not given (no X-Scope-OrgID, or an empty Basic username) and
// the policy grants exactly one tenant (not "*"), that tenant is used; else
// the request is refused with 400. A Basic username wins over X-Scope-OrgID.
// The metric counts an OIDC token naming several policies under policy
// "+" (their combinations are the identity provider's to make, not the
// configuration's); Decision.Policy names them all, for logs.
func (g *Guard) Decide(r *http.Request, scope Scope) Decision {
	d := g.decide(r, scope)
	if g.metrics != nil {
		switch {
		case d.ctr != nil:
			d.ctr[d.result].Inc()
		case d.Policy == "":
			g.anonCtr[d.result].Inc()
		case g.unionCtr != nil: // an OIDC token naming several policies
			g.unionCtr[d.result].Inc()
		}
	}
	return d
}

func (g *Guard) unauthenticated(msg, detail string) Decision {
	return Decision{
		Status:          http.StatusUnauthorized,
		Message:         msg,
		Detail:          detail,
		WWWAuthenticate: g.challenge,
		result:          resultUnauthenticated,
	}
}

func badRequest(gr *grant, msg string) Decision {
	d := Decision{Status: http.StatusBadRequest, Message: msg, result: resultBadRequest}
	if gr != nil {
		d.Policy, d.ctr = gr.name, gr.counters()
	}
	return d
}

func forbidden(gr *grant, msg string) Decision {
	return Decision{Status: http.StatusForbidden, Message: msg, Policy: gr.name, ctr: gr.counters(), result: resultForbidden}
}

const msgNoCredentials = "authentication required: send Basic credentials (username: tenant, password: token) or a Bearer token"

func (g *Guard) decide(r *http.Request, scope Scope) Decision {
	auth := r.Header[authorizationKey]
	switch len(auth) {
	case 0:
		return g.unauthenticated(msgNoCredentials, "no Authorization header")
	case 1:
	default:
		return badRequest(nil, "more than one Authorization header")
	}
	scheme, rest, _ := strings.Cut(auth[0], " ")
	rest = strings.TrimLeft(rest, " ")

	// The credential is copied into (or decoded in) a buffer on the stack:
	// no allocation for the usual static token.
	var buf, src [credBuf]byte
	var secret []byte
	var tenantArg string // the tenant(s) the credential names
	switch {
	case strings.EqualFold(scheme, "Basic"):
		in := src[:]
		if len(rest) > len(in) {
			in = make([]byte, len(rest))
		}
		in = in[:copy(in, rest)]
		out := buf[:]
		if n := base64.StdEncoding.DecodedLen(len(in)); n > len(out) {
			out = make([]byte, n)
		}
		n, err := base64.StdEncoding.Decode(out, in)
		if err != nil {
			return g.unauthenticated("malformed Basic credentials: not base64", "malformed Basic credentials")
		}
		u, p, ok := bytes.Cut(out[:n], []byte{':'})
		if !ok {
			return g.unauthenticated("malformed Basic credentials: no ':' between username and password", "malformed Basic credentials")
		}
		secret = p
		if len(u) > 0 {
			tenantArg = string(u)
		}
	case strings.EqualFold(scheme, "Bearer"):
		tok := strings.TrimRight(rest, " ")
		if len(tok) <= len(buf) {
			secret = buf[:copy(buf[:], tok)]
		} else {
			secret = []byte(tok)
		}
	default:
		return g.unauthenticated(msgNoCredentials, "unsupported authorization scheme")
	}
	if len(secret) == 0 {
		return g.unauthenticated("empty token", "empty token")
	}

	var gr *grant
	var subject string
	if g.oidc != nil && looksLikeJWT(secret) {
		snap := g.snap.Load()
		res := g.oidc.verify(r.Context(), secret, snap)
		switch {
		case res.unavailable:
			return Decision{
				Status:  http.StatusServiceUnavailable,
				Message: "cannot check the token now: the identity provider's keys are unavailable; try again later",
				Detail:  bounded(res.detail),
				result:  resultUnavailable,
			}
		case res.invalid:
			return g.unauthenticated("invalid token", bounded(res.detail))
		case res.grant == nil:
			return Decision{
				Status:  http.StatusForbidden,
				Message: "the token names no configured access policy",
				Detail:  bounded(res.detail),
				Subject: res.subject,
				result:  resultForbidden,
			}
		}
		gr, subject = res.grant, res.subject
	} else {
		e, ok := g.snap.Load().byHash[sha256.Sum256(secret)]
		if !ok {
			return g.unauthenticated("invalid or unknown token", "unknown token")
		}
		if !e.expires.IsZero() && !g.now().Before(e.expires) {
			return g.unauthenticated("token expired", "token of policy "+e.policy.name+" expired at "+e.expires.Format(time.RFC3339))
		}
		gr = &e.policy.grant
	}

	if tenantArg == "" {
		switch v := r.Header[tenantKey]; {
		case len(v) > 1:
			return badRequest(gr, "more than one X-Scope-OrgID header")
		case len(v) == 1 && v[0] != "":
			tenantArg = v[0]
		case gr.only != "":
			tenantArg = gr.only
		default:
			return badRequest(gr, "a tenant is required: set X-Scope-OrgID (or the Basic username); this token's policy grants more than one tenant")
		}
	}

	// One tenant rule in the tree, orgid's: each "|" part a valid tenant ID
	// once dskit's ":key=value" metadata suffix is trimmed, as Mimir trims it.
	if err := orgid.Check(tenantArg); err != nil {
		return badRequest(gr, fmt.Sprintf("invalid tenant in %q: %v", tenantArg, err))
	}
	multi := strings.IndexByte(tenantArg, '|') >= 0
	if multi && !scope.MultiTenant() {
		return badRequest(gr, fmt.Sprintf("several tenants (%q) are allowed for %s and %s only, not %s", tenantArg, ScopeMetricsRead, ScopeRulesRead, scope))
	}
	bit := scope.bit()
	if gr.scopes&bit == 0 {
		return forbidden(gr, fmt.Sprintf("scope %s is not granted to this token", scope))
	}
	for rest := tenantArg; ; {
		part, more, found := strings.Cut(rest, "|")
		t := tenant.TrimMetadata(part)
		if !gr.hasTenant(t, bit) {
			if gr.parts != nil {
				return forbidden(gr, fmt.Sprintf("tenant %q is not granted to this token for %s", t, scope))
			}
			return forbidden(gr, fmt.Sprintf("tenant %q is not granted to this token", t))
		}
		if !found {
			break
		}
		rest = more
	}
	return Decision{Policy: gr.name, Subject: subject, Tenant: tenantArg, ctr: gr.counters(), result: resultAllowed}
}

// maxDetail bounds a Detail made from what a client sent (a JWT's header
// can hold anything, and Detail goes to the access log).
const maxDetail = 300

// bounded is s cut to maxDetail bytes (at a character boundary).
func bounded(s string) string {
	if len(s) <= maxDetail {
		return s
	}
	return strings.ToValidUTF8(s[:maxDetail], "") + "…"
}

// looksLikeJWT reports whether a credential has the shape of a JWS in
// compact form: three base64url parts separated by dots, the first two not
// empty (an unsigned JWT has an empty third part; it is refused by the
// verifier, not looked up as a static token).
func looksLikeJWT(b []byte) bool {
	dots := 0
	last := -1
	for i, c := range b {
		switch {
		case c == '.':
			if i == last+1 && dots < 2 {
				return false // empty header or payload
			}
			dots++
			last = i
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return dots == 2
}

// severalPolicies is the policy label of a decision for an OIDC token
// naming several policies.
const severalPolicies = "+"
