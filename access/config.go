package access

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/metrics-gateway/metrics_gateway/orgid"
)

// DefaultRealm is the realm of the WWW-Authenticate challenge when
// Config.Realm is empty.
const DefaultRealm = "metrics_gateway"

// DefaultPolicyClaim is the JWT claim that names the policies of an OIDC
// token when OIDCConfig.PolicyClaim is empty.
const DefaultPolicyClaim = "metrics_gateway_policy"

// AllTenants in a policy's tenants grants every tenant.
const AllTenants = "*"

// Config is the access_policies configuration.
type Config struct {
	// Policies are the inline access policies. Each names the tenants it
	// grants, the scopes it grants on them and the static tokens that carry
	// it. Policy names and token hashes are unique across these and the
	// policies of the file.
	Policies []Policy `json:"policies,omitempty"`

	// File is the path of a YAML file (JSON is valid YAML) with more
	// policies, in the same shape under a top-level `policies:` key. It is
	// read when the configuration loads (a file that cannot be read or is
	// invalid fails the load) and read again every 2 seconds (by default):
	// a change of its content takes effect without a reload; a broken
	// version is reported and the last good policies stay in force. Meant
	// for a Kubernetes Secret or ConfigMap volume. Default: none.
	File string `json:"file,omitempty"`

	// Realm is the realm of the `WWW-Authenticate: Basic realm="..."`
	// challenge sent with 401 responses. It must not contain `"`, `\` or
	// control characters. Default: "metrics_gateway".
	Realm string `json:"realm,omitempty"`

	// OIDC, when set, accepts JSON Web Tokens issued by an OpenID Connect
	// provider in place of static tokens (as a Bearer token or as the Basic
	// password). The token's policy claim names the policies that apply.
	// With it, a credential shaped like a JWT is always verified as one,
	// never looked up as a static token. Default: none (a JWT-shaped
	// credential is then looked up as a static token).
	OIDC *OIDCConfig `json:"oidc,omitempty"`
}

// Policy grants scopes on tenants to the holders of its tokens.
type Policy struct {
	// Name identifies the policy in logs, metrics and the policy_claim of
	// OIDC tokens. Required, unique.
	Name string `json:"name" yaml:"name"`

	// Tenants are the tenant IDs the policy grants, or "*" for every
	// tenant. Each must be a valid Mimir tenant ID (1 to 150 characters
	// from a-z A-Z 0-9 ! - _ . * ' ( ), not "." or ".."). Required.
	Tenants []string `json:"tenants" yaml:"tenants"`

	// Scopes are the actions granted on those tenants: metrics:write,
	// metrics:read, metrics:delete, rules:read, rules:write, alerts:read,
	// alerts:write, admin. Required. admin does not imply any other scope,
	// and acts on the whole cluster: only with Tenants ["*"].
	Scopes []string `json:"scopes" yaml:"scopes"`

	// Tokens are the static tokens that carry this policy, by hash. A
	// policy without tokens is useful for OIDC only. Default: none.
	Tokens []Token `json:"tokens,omitempty" yaml:"tokens,omitempty"`
}

// Token is a static token, known by its hash only.
type Token struct {
	// Hash is "sha256:" followed by the 64 hex digits of the SHA-256 of
	// the token (as `caddy metrics-gateway hash-token` prints it).
	// Required; a hash appears once in all policies.
	Hash string `json:"hash" yaml:"hash"`

	// Expires is the RFC 3339 time from which the token is refused, e.g.
	// "2027-01-01T00:00:00Z". Default: never.
	Expires string `json:"expires,omitempty" yaml:"expires,omitempty"`
}

// OIDCConfig configures the acceptance of JWTs from an OpenID Connect
// provider.
type OIDCConfig struct {
	// Issuer is the provider's issuer URL (absolute http or https URL),
	// exactly as it appears in the tokens' `iss` claim. Its discovery
	// document is read from <issuer>/.well-known/openid-configuration.
	// Required.
	Issuer string `json:"issuer"`

	// Audience, when set, must be one of the token's `aud` values.
	// Default: the audience is not checked (any token of the issuer whose
	// policy claim names a policy is accepted).
	Audience string `json:"audience,omitempty"`

	// PolicyClaim is the claim naming the token's policies: a string (one
	// policy) or a list of strings (the union of those policies' grants:
	// each tenant of a request must be granted the request's scope by one
	// of them). Names that are not configured are ignored. A dotted
	// name such as "realm_access.roles" is looked up as a path through
	// nested objects when no top-level claim has that exact name. Default:
	// "metrics_gateway_policy".
	PolicyClaim string `json:"policy_claim,omitempty"`
}

// Scope is an action on a tenant.
type Scope string

// The scopes. A request needs exactly the scope of its route; admin is its
// own scope (Mimir's administrative APIs) and implies no other, as in GEM.
const (
	ScopeMetricsWrite  Scope = "metrics:write"
	ScopeMetricsRead   Scope = "metrics:read"
	ScopeMetricsDelete Scope = "metrics:delete"
	ScopeRulesRead     Scope = "rules:read"
	ScopeRulesWrite    Scope = "rules:write"
	ScopeAlertsRead    Scope = "alerts:read"
	ScopeAlertsWrite   Scope = "alerts:write"
	ScopeAdmin         Scope = "admin"
)

// allScopes lists the scopes in the order of their bits.
var allScopes = [...]Scope{
	ScopeMetricsWrite, ScopeMetricsRead, ScopeMetricsDelete,
	ScopeRulesRead, ScopeRulesWrite, ScopeAlertsRead, ScopeAlertsWrite,
	ScopeAdmin,
}

// Scopes returns every known scope.
func Scopes() []Scope { return append([]Scope(nil), allScopes[:]...) }

// Valid reports whether s is a known scope.
func (s Scope) Valid() bool { return s.bit() != 0 }

// MultiTenant reports whether a request of this scope may name several
// tenants ("a|b"): only reads that Mimir federates do.
func (s Scope) MultiTenant() bool { return s == ScopeMetricsRead || s == ScopeRulesRead }

// scopeMask is a set of scopes, one bit each.
type scopeMask uint8

func (s Scope) bit() scopeMask {
	for i, k := range allScopes {
		if s == k {
			return 1 << i
		}
	}
	return 0
}

func knownScopes() string {
	names := make([]string, len(allScopes))
	for i, s := range allScopes {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

const hashPrefix = "sha256:"

// parseHash decodes a "sha256:<64 hex>" token hash. Its error never
// contains the value: a token pasted in place of its hash must not end up in
// a log.
func parseHash(s string) ([32]byte, error) {
	var sum [32]byte
	hexPart, ok := strings.CutPrefix(s, hashPrefix)
	if !ok || len(hexPart) != 64 {
		return sum, fmt.Errorf(`hash must be "sha256:" followed by 64 hex digits (got %d characters; make one with HashToken or the hash-token command)`, len(s))
	}
	if _, err := hex.Decode(sum[:], []byte(hexPart)); err != nil {
		return sum, errors.New(`hash must be "sha256:" followed by 64 hex digits (it has a character that is not a hex digit)`)
	}
	return sum, nil
}

// parseExpires parses a token's expiry; the zero time means never.
// shown quotes a value for an error about a field that holds no secret,
// unless it looks like one pasted in the wrong place: scopes and times
// have a ":" (or are digits and date punctuation), tokens and their hashes
// in hex or base64url do not.
func shown(v string) string {
	timeLike := strings.Trim(v, "0123456789-:.+TZ") == ""
	if (timeLike || strings.Contains(v, ":")) && !strings.HasPrefix(v, hashPrefix) && len(v) <= 64 {
		return strconv.Quote(v)
	}
	return "(not shown: without a \":\" it may be a token pasted in the wrong place)"
}

func parseExpires(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("expires %s is not an RFC 3339 time such as 2027-01-01T00:00:00Z", shown(s))
	}
	return t, nil
}

// checker accumulates the uniqueness state of one validation.
type checker struct {
	names  map[string]string   // policy name -> where it was defined
	hashes map[[32]byte]string // token hash -> where it was used
	errs   []error
}

func newChecker() *checker {
	return &checker{names: map[string]string{}, hashes: map[[32]byte]string{}}
}

func (c *checker) errorf(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

// policies checks a list of policies; prefix names the list in messages,
// such as "access_policies.policies".
func (c *checker) policies(prefix string, ps []Policy) {
	for i, p := range ps {
		where := fmt.Sprintf("%s[%d]", prefix, i)
		if p.Name != "" {
			where += fmt.Sprintf(" (%s)", p.Name)
		}
		c.policy(where, p)
	}
}

func (c *checker) policy(where string, p Policy) {
	switch {
	case p.Name == "":
		c.errorf("%s.name: required", where)
	case strings.ContainsFunc(p.Name, isControl):
		c.errorf("%s.name: contains a control character", where)
	case strings.Contains(p.Name, severalPolicies):
		// "+" joins the names of the policies an OIDC token names.
		c.errorf("%s.name: contains %q, which joins the names of several policies", where, severalPolicies)
	default:
		if first, dup := c.names[p.Name]; dup {
			c.errorf("%s.name: duplicate policy name %q (also %s)", where, p.Name, first)
		} else {
			c.names[p.Name] = where
		}
	}

	if len(p.Tenants) == 0 {
		c.errorf("%s.tenants: required (tenant IDs, or \"*\" for all)", where)
	}
	for j, t := range p.Tenants {
		if t == AllTenants {
			continue
		}
		if strings.Contains(t, "|") {
			c.errorf("%s.tenants[%d]: %q lists several tenants: write each as its own entry", where, j, t)
			continue
		}
		if err := orgid.CheckOne(t); err != nil {
			c.errorf("%s.tenants[%d]: %v", where, j, err)
		}
	}

	if len(p.Scopes) == 0 {
		c.errorf("%s.scopes: required (known: %s)", where, knownScopes())
	}
	for _, s := range p.Scopes {
		if !Scope(s).Valid() {
			c.errorf("%s.scopes: unknown scope %s (known: %s)", where, shown(s), knownScopes())
		}
	}
	if slices.Contains(p.Scopes, string(ScopeAdmin)) && len(p.Tenants) > 0 && !slices.Contains(p.Tenants, AllTenants) {
		// The tenant a caller names means nothing to /ingester/shutdown,
		// a ring page or /runtime_config: a tenant's admin would be the
		// cluster's.
		c.errorf("%s.scopes: %s acts on the whole cluster (ring and status pages, /ingester/shutdown, /runtime_config …), not on a tenant: a policy granting it needs tenants %q", where, ScopeAdmin, AllTenants)
	}

	for j, t := range p.Tokens {
		tw := fmt.Sprintf("%s.tokens[%d]", where, j)
		if sum, err := parseHash(t.Hash); err != nil {
			c.errorf("%s.hash: %v", tw, err)
		} else if first, dup := c.hashes[sum]; dup {
			c.errorf("%s.hash: the same hash is already used by %s (a token belongs to one policy)", tw, first)
		} else {
			c.hashes[sum] = tw
		}
		if _, err := parseExpires(t.Expires); err != nil {
			c.errorf("%s.expires: %v", tw, err)
		}
	}
}

func (c *checker) err() error { return errors.Join(c.errs...) }

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// Validate checks the configuration without side effects (the file is not
// read: see LoadFile). The error lists every problem, one a line, each naming
// its field, such as
//
//	access_policies.policies[1] (team-a).scopes: unknown scope "metrics:wrte" (known: ...)
//
// No message contains a token hash.
func (c *Config) Validate() error {
	ck := c.check()
	return ck.err()
}

func (c *Config) check() *checker {
	ck := newChecker()
	ck.policies("access_policies.policies", c.Policies)
	if strings.ContainsFunc(c.Realm, func(r rune) bool { return r == '"' || r == '\\' || isControl(r) }) {
		ck.errorf(`access_policies.realm: must not contain '"', '\' or control characters`)
	}
	if o := c.OIDC; o != nil {
		if o.Issuer == "" {
			ck.errorf("access_policies.oidc.issuer: required")
		} else if u, err := url.Parse(o.Issuer); err == nil && u.User != nil || err != nil && strings.Contains(o.Issuer, "@") {
			// Not quoted: it would show the password in logs, errors and
			// the admin view.
			ck.errorf("access_policies.oidc.issuer: user info (user:password@) has no place in an issuer URL")
		} else if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			ck.errorf("access_policies.oidc.issuer: %q is not an absolute http or https URL without query or fragment", o.Issuer)
		}
		if strings.ContainsFunc(o.PolicyClaim, isControl) {
			ck.errorf("access_policies.oidc.policy_claim: contains a control character")
		}
	}
	return ck
}

// policyFile is the shape of the policy file.
type policyFile struct {
	// A pointer, so that a file without the key (empty, or read while
	// being rewritten in place) is an error rather than "no policies".
	Policies *[]Policy `yaml:"policies"`
}

// LoadFile reads and checks the policy file c.File: its YAML, the same rules
// as Validate, and uniqueness across the inline policies and the file's
// (policy names and token hashes). It returns the file's policies. The error
// names the file and the field and never quotes a value from the file that
// could be a secret.
func (c *Config) LoadFile() ([]Policy, error) {
	data, err := c.readFile()
	if err != nil {
		return nil, err
	}
	return c.parseFile(data)
}

// readFile reads c.File; the error names the field.
func (c *Config) readFile() ([]byte, error) {
	data, err := os.ReadFile(c.File)
	if err != nil {
		return nil, fmt.Errorf("access_policies.file: %w", err)
	}
	return data, nil
}

// parseFile parses and checks the content of c.File.
func (c *Config) parseFile(data []byte) ([]Policy, error) {
	var f policyFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("access_policies.file (%s): %s", c.File, redactYAML(err))
	}
	if f.Policies == nil {
		return nil, fmt.Errorf("access_policies.file (%s): no policies key (empty, or caught while being rewritten in place?); write `policies: []` for none", c.File)
	}
	ck := newChecker()
	ck.policies("access_policies.policies", c.Policies)
	ck.errs = nil // the inline policies' own problems are Validate's to report
	ck.policies(fmt.Sprintf("access_policies.file (%s): policies", c.File), *f.Policies)
	if err := ck.err(); err != nil {
		return nil, err
	}
	return *f.Policies, nil
}

// redactYAML returns a YAML error without the values it quotes, such as
// "cannot unmarshal !!str `sha256:...`" or "unknown anchor 'x'": each of its
// lines up to its first quote, which keeps the line number and the kind of
// mistake. A value may be a token pasted in place of its hash.
func redactYAML(err error) string {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		if j := strings.IndexAny(l, "`'\""); j >= 0 {
			lines[i] = l[:j] + "(value not shown)"
		}
	}
	return strings.Join(lines, "\n")
}
