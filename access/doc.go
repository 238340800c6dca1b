// Package access decides, for each HTTP request, who may do what on which
// Mimir/Cortex/GEM tenant: access policies in front of the cluster, without
// GEM's licence. It knows HTTP only (no Caddy); the Caddy module embeds its
// Config as "access_policies".
//
// # Use
//
//	if err := cfg.Validate(); err != nil { ... }      // at config adapt time; no I/O
//	g, err := access.New(cfg, access.Options{Logger: log, Metrics: counter})
//	defer g.Close()
//
//	// per request, with the scope of the route:
//	d := g.Decide(r, access.ScopeMetricsWrite)
//	if !d.Allowed() {
//		if d.WWWAuthenticate != "" { // a 401
//			w.Header().Set("WWW-Authenticate", d.WWWAuthenticate)
//		}
//		http.Error(w, d.Message, d.Status) // the caller's own error writer
//		return
//	}
//	d.Apply(r) // exactly one X-Scope-OrgID; Authorization removed
//
// The package writes no answers: the caller answers a refused request with
// its own error writer (the Caddy module with the one that serves
// handle_errors and Retry-After), so that every error of the gateway looks
// the same.
//
// counter comes from NewRequestsCounter; the caller registers it once and
// gives it to every Guard. Status returns the policies in force for an
// admin page, without any token or hash. NewToken and HashToken make tokens
// and their hashes for the configuration.
//
// # Policies and credentials
//
// A Policy grants scopes (ScopeMetricsWrite, ScopeMetricsRead,
// ScopeMetricsDelete, ScopeRulesRead, ScopeRulesWrite, ScopeAlertsRead,
// ScopeAlertsWrite, ScopeAdmin) on tenants (IDs, or "*") to the holders of
// its tokens. A static token belongs to one policy: its hash appears once
// across the inline policies and the policy file. ScopeAdmin implies no other
// scope, as in GEM: a token that operates the cluster need not be able to
// read or write series, and an operator gives both explicitly when wanted.
// ScopeAdmin acts on the whole cluster (ring pages, /ingester/shutdown,
// /runtime_config), whatever tenant a caller names, so only a policy of
// every tenant ("*") may grant it.
//
// A request authenticates with
//   - Basic: username = tenant ("a" or "a|b"), password = token; or
//   - Bearer: Authorization: Bearer <token>, tenant from X-Scope-OrgID.
//
// When no tenant is given and the policy grants exactly one tenant (not
// "*"), that one is used; otherwise the request gets 400. Each tenant must
// pass package orgid's rule, the gateway's one tenant rule (dskit's tenant ID
// rules; dskit's ":key=value" metadata suffix is allowed and ignored for the
// grant, as Mimir ignores it for the tenant). Several tenants ("a|b",
// federation) are accepted for metrics:read and rules:read only, and each
// must be granted. Answers: 401 (with WWW-Authenticate: Basic realm="...")
// for a missing, unknown, expired or invalid credential; 400 for a missing
// or invalid tenant; 403 for a scope or tenant that the policy does not
// grant; 503 when a JWT cannot be checked because the OIDC provider's keys
// cannot be fetched (so that remote-write clients retry instead of dropping
// data, which they do on 401).
//
// # Static tokens and their hashes
//
// Configuration holds SHA-256 hashes of tokens, never tokens. A fast hash
// is right here, unlike for passwords: a token from NewToken has 256 random
// bits, so there is no dictionary to try and a stolen hash cannot be
// reversed, however fast the hash; a slow hash (bcrypt, argon2) would cost
// milliseconds of CPU on every request and make the gateway easy to
// overload. The lookup is one SHA-256 of the presented token (on the stack)
// and one map lookup by the 32-byte sum in an immutable snapshot, with no
// lock and no allocation beyond the tenant string of a Basic username: a
// fraction of a microsecond.
//
// # The policy file
//
// Config.File adds policies from a YAML (or JSON) file with a top-level
// `policies:` list of the same shape. New fails when the file cannot be read
// or is invalid. Afterwards a goroutine reads it every 2 s (at most every
// 10 s) and compares its content's hash with the last read, not its
// modification time nor file events: Kubernetes updates Secret and ConfigMap
// volumes by swapping a symlink (..data). A changed file is validated like
// the configuration (names and hashes unique across inline and file
// policies) and swapped in atomically; a file that cannot be read, parsed or
// validated leaves the policies in force, and its error is logged once and
// shown by Status until the file changes.
//
// # OIDC
//
// With Config.OIDC, a credential shaped like a JWT (three base64url parts)
// is verified with github.com/coreos/go-oidc: signature with one of the
// provider's keys (asymmetric algorithms only: "none" and HMAC are refused),
// iss equal to the issuer, aud containing the audience when one is
// configured, exp, and nbf (go-oidc allows five minutes of clock skew for
// nbf). The policy claim (default "metrics_gateway_policy") names the
// token's policy, or a list of policies whose grants add up: a request is
// allowed when, for each tenant it names, one of them grants the scope on
// that tenant (one policy's scopes do not extend to another's tenants).
// Names that are not configured are ignored; a token naming none gets 403. Without Config.OIDC a JWT-shaped credential is a static token like
// any other.
//
// Discovery and keys are fetched lazily, by the first JWT, so that a
// provider that is down does not stop the gateway from starting; while they
// cannot be fetched, JWTs get 503. The cache is the provider's current key
// set only. A token whose key ID is not in it makes the set be fetched
// again (key rotation), at most once every 10 seconds whatever the tokens
// say, so forged key IDs cannot make the gateway hammer the provider (a
// token issued after a fetch too recent to repeat gets 503 until the next
// one: its key may be newer than the set); a set older than an hour is
// fetched again with the next JWT, so a withdrawn key stops working.
//
// # Secrets
//
// No log line, error, Decision or Status holds a token or a token hash:
// validation errors name the policy and position of a bad or duplicated
// hash, and YAML errors have their quoted values removed.
package access
