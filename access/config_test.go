package access

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// Hashes of tokens used in the tests.
var (
	hashA = HashToken("token-a")
	hashB = HashToken("token-b")
	hashC = HashToken("token-c")
)

func validConfig() Config {
	return Config{
		Policies: []Policy{
			{Name: "team-a", Tenants: []string{"team-a"}, Scopes: []string{"metrics:write", "metrics:read"}, Tokens: []Token{{Hash: hashA}}},
			{Name: "ops", Tenants: []string{"*"}, Scopes: []string{"admin"}, Tokens: []Token{{Hash: hashB, Expires: "2027-01-01T00:00:00Z"}}},
		},
	}
}

func TestValidateAcceptsValidConfig(t *testing.T) {
	c := validConfig()
	c.Realm = "Mimir (prod)"
	c.OIDC = &OIDCConfig{Issuer: "https://idp.example.com/realms/x", Audience: "gateway"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (&Config{}).Validate(); err != nil {
		t.Fatalf("empty config: %v", err)
	}
}

func TestValidateErrors(t *testing.T) {
	tests := []struct {
		name   string
		modify func(c *Config)
		want   string // substring of the error
	}{
		// A token pasted as a scope or an expiry is not quoted back.
		{"token as a scope", func(c *Config) { c.Policies[1].Scopes = []string{"Xk3v9QpLmN2bR7tY0wEr4uI8oP1aS6dF5gH"} },
			`access_policies.policies[1] (ops).scopes: unknown scope (not shown: without a ":" it may be a token pasted in the wrong place)`},
		{"token as expires", func(c *Config) { c.Policies[1].Tokens[0].Expires = "Xk3v9QpLmN2bR7tY0wEr4uI8oP1aS6dF5gH" },
			`expires (not shown: without a ":" it may be a token pasted in the wrong place) is not an RFC 3339 time`},
		{"unknown scope", func(c *Config) { c.Policies[1].Scopes = []string{"metrics:wrte"} },
			`access_policies.policies[1] (ops).scopes: unknown scope "metrics:wrte" (known: metrics:write, metrics:read, metrics:delete, rules:read, rules:write, alerts:read, alerts:write, admin)`},
		{"empty scopes", func(c *Config) { c.Policies[0].Scopes = nil }, `access_policies.policies[0] (team-a).scopes: required`},
		{"issuer with user info", func(c *Config) { c.OIDC = &OIDCConfig{Issuer: "https://client:hunter2@idp.example/realms/x"} },
			"access_policies.oidc.issuer: user info (user:password@) has no place in an issuer URL"},
		{"admin on a tenant", func(c *Config) { c.Policies[1].Tenants = []string{"team-a"} },
			`access_policies.policies[1] (ops).scopes: admin acts on the whole cluster (ring and status pages, /ingester/shutdown, /runtime_config …), not on a tenant: a policy granting it needs tenants "*"`},
		{"empty tenants", func(c *Config) { c.Policies[0].Tenants = nil }, `access_policies.policies[0] (team-a).tenants: required`},
		{"empty name", func(c *Config) { c.Policies[1].Name = "" }, `access_policies.policies[1].name: required`},
		{"duplicate name", func(c *Config) { c.Policies[1].Name = "team-a" },
			`access_policies.policies[1] (team-a).name: duplicate policy name "team-a" (also access_policies.policies[0] (team-a))`},
		{"plus in name", func(c *Config) { c.Policies[1].Name = "a+b" },
			`access_policies.policies[1] (a+b).name: contains "+", which joins the names of several policies`},
		{"invalid tenant", func(c *Config) { c.Policies[0].Tenants = []string{"team a"} },
			`access_policies.policies[0] (team-a).tenants[0]: tenant ID 'team a' contains unsupported character ' '`},
		{"tenant dot", func(c *Config) { c.Policies[0].Tenants = []string{".."} }, `tenants[0]: tenant ID is '.' or '..'`},
		{"tenant too long", func(c *Config) { c.Policies[0].Tenants = []string{strings.Repeat("x", 151)} }, `tenants[0]: tenant ID is too long`},
		{"empty tenant", func(c *Config) { c.Policies[0].Tenants = []string{""} }, `tenants[0]: tenant ID is empty`},
		{"tenant with metadata", func(c *Config) { c.Policies[0].Tenants = []string{"team-a:product=k6"} }, `tenants[0]: tenant ID 'team-a:product=k6' contains unsupported character ':'`},
		{"tenant with pipe", func(c *Config) { c.Policies[0].Tenants = []string{"a|b"} }, `tenants[0]: "a|b" lists several tenants`},
		{"hash without prefix", func(c *Config) { c.Policies[0].Tokens[0].Hash = strings.TrimPrefix(hashA, "sha256:") },
			`access_policies.policies[0] (team-a).tokens[0].hash: hash must be "sha256:" followed by 64 hex digits`},
		{"hash too short", func(c *Config) { c.Policies[0].Tokens[0].Hash = hashA[:70] }, `tokens[0].hash: hash must be`},
		{"hash not hex", func(c *Config) { c.Policies[0].Tokens[0].Hash = "sha256:" + strings.Repeat("g", 64) }, `not a hex digit`},
		{"token pasted as hash", func(c *Config) { c.Policies[0].Tokens[0].Hash = "s3cr3t-t0ken" }, `tokens[0].hash: hash must be`},
		{"duplicate hash in a policy", func(c *Config) { c.Policies[0].Tokens = append(c.Policies[0].Tokens, Token{Hash: hashA}) },
			`access_policies.policies[0] (team-a).tokens[1].hash: the same hash is already used by access_policies.policies[0] (team-a).tokens[0]`},
		{"duplicate hash across policies", func(c *Config) { c.Policies[1].Tokens[0].Hash = hashA },
			`access_policies.policies[1] (ops).tokens[0].hash: the same hash is already used by access_policies.policies[0] (team-a).tokens[0]`},
		{"duplicate hash, other case", func(c *Config) {
			c.Policies[1].Tokens[0].Hash = strings.ToUpper(hashA[7:])
			c.Policies[1].Tokens[0].Hash = "sha256:" + c.Policies[1].Tokens[0].Hash
		},
			`the same hash is already used`},
		{"bad expiry", func(c *Config) { c.Policies[1].Tokens[0].Expires = "2027-01-01" },
			`access_policies.policies[1] (ops).tokens[0].expires: expires "2027-01-01" is not an RFC 3339 time`},
		{"oidc without issuer", func(c *Config) { c.OIDC = &OIDCConfig{Audience: "x"} }, `access_policies.oidc.issuer: required`},
		{"oidc relative issuer", func(c *Config) { c.OIDC = &OIDCConfig{Issuer: "idp.example.com"} }, `access_policies.oidc.issuer: "idp.example.com" is not an absolute http or https URL`},
		{"oidc ftp issuer", func(c *Config) { c.OIDC = &OIDCConfig{Issuer: "ftp://idp.example.com"} }, `access_policies.oidc.issuer:`},
		{"realm with quote", func(c *Config) { c.Realm = `a"b` }, `access_policies.realm: must not contain`},
		{"realm with newline", func(c *Config) { c.Realm = "a\nb" }, `access_policies.realm: must not contain`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.modify(&c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q\ndoes not contain %q", err, tt.want)
			}
			assertNoSecret(t, err.Error())
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := validConfig()
	c.Policies[0].Scopes = []string{"nope"}
	c.Policies[1].Tenants = nil
	err := c.Validate()
	if err == nil || strings.Count(err.Error(), "\n") != 1 {
		t.Fatalf("want two lines, got %v", err)
	}
}

// assertNoSecret fails when s contains a token or hash of the tests.
func assertNoSecret(t *testing.T, s string) {
	t.Helper()
	for _, h := range []string{hashA, hashB, hashC} {
		if strings.Contains(s, h[7:]) || strings.Contains(strings.ToLower(s), h[7:20]) {
			t.Fatalf("%q contains a hash", s)
		}
	}
	// YAML errors quote 7 characters of a value: "s3cr3t" catches that.
	for _, tok := range []string{"token-a", "token-b", "token-c", "s3cr3t", "cr3t-t0"} {
		if strings.Contains(s, tok) {
			t.Fatalf("%q contains a token", s)
		}
	}
}

func TestTokenJSON(t *testing.T) {
	b, err := json.Marshal(Token{Hash: hashA, Expires: "2027-01-01T00:00:00Z"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"hash":"` + hashA + `","expires":"2027-01-01T00:00:00Z"}`; string(b) != want {
		t.Fatalf("got %s, want %s", b, want)
	}
	var c Config
	in := `{"policies":[{"name":"a","tenants":["t"],"scopes":["metrics:read"],"tokens":[{"hash":"` + hashA + `"}]}],"realm":"r","file":"/p.yaml","oidc":{"issuer":"https://i","audience":"aud","policy_claim":"groups"}}`
	if err := json.Unmarshal([]byte(in), &c); err != nil {
		t.Fatal(err)
	}
	if c.Policies[0].Tokens[0].Hash != hashA || c.OIDC.PolicyClaim != "groups" || c.File != "/p.yaml" || c.Realm != "r" {
		t.Fatalf("decoded %+v", c)
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policies.yaml")
	c := validConfig()
	c.File = path

	// YAML, with an unquoted timestamp (YAML would make it a time).
	standin.ReplaceFile(t, path, `
policies:
  - name: team-c
    tenants: [team-c, team-d]
    scopes: [metrics:read, rules:read]
    tokens:
      - hash: `+hashC+`
        expires: 2027-06-01T12:00:00Z
`)
	ps, err := c.LoadFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Name != "team-c" || ps[0].Tokens[0].Expires != "2027-06-01T12:00:00Z" || len(ps[0].Tenants) != 2 {
		t.Fatalf("loaded %+v", ps)
	}

	// JSON is YAML.
	standin.ReplaceFile(t, path, `{"policies": [{"name": "j", "tenants": ["*"], "scopes": ["admin"]}]}`)
	if ps, err = c.LoadFile(); err != nil || ps[0].Name != "j" {
		t.Fatalf("JSON file: %v %+v", err, ps)
	}

	// No policies, said so.
	standin.ReplaceFile(t, path, "policies: []")
	if ps, err = c.LoadFile(); err != nil || len(ps) != 0 {
		t.Fatalf("policies: []: %v %+v", err, ps)
	}
	// An empty file (or one caught while being rewritten in place) is
	// not "no policies".
	standin.ReplaceFile(t, path, "")
	if _, err = c.LoadFile(); err == nil || !strings.Contains(err.Error(), "no policies key") {
		t.Fatalf("empty file: %v", err)
	}

	errCases := []struct{ name, content, want string }{
		{"name used inline", `{"policies": [{"name": "team-a", "tenants": ["x"], "scopes": ["metrics:read"]}]}`,
			`policies[0] (team-a).name: duplicate policy name "team-a" (also access_policies.policies[0] (team-a))`},
		{"hash used inline", `{"policies": [{"name": "x", "tenants": ["x"], "scopes": ["metrics:read"], "tokens": [{"hash": "` + hashB + `"}]}]}`,
			`policies[0] (x).tokens[0].hash: the same hash is already used by access_policies.policies[1] (ops).tokens[0]`},
		{"unknown scope", `{"policies": [{"name": "x", "tenants": ["x"], "scopes": ["metrics:wrte"]}]}`, `policies[0] (x).scopes: unknown scope "metrics:wrte"`},
		{"unknown field", "policies:\n  - name: x\n    tenant: [x]\n", `field tenant not found`},
		{"token where a list is", "policies:\n  - name: x\n    tenants: [x]\n    scopes: [metrics:read]\n    tokens: s3cr3t-t0ken\n", `cannot unmarshal`},
		{"not YAML", "policies: [", `access_policies.file (` + path + `)`},
		// YAML quotes values in several ways; none may show.
		{"token as an alias", "policies:\n  - name: x\n    tenants: [x]\n    scopes: [metrics:read]\n    tokens:\n      - hash: *s3cr3t-t0ken\n", `unknown anchor`},
		{"token with a backquote", "policies:\n  - name: x\n    tenants: [x]\n    scopes: [metrics:read]\n    tokens: s3`cr3t-t0ken\n", `access_policies.file (`},
	}
	for _, tt := range errCases {
		t.Run(tt.name, func(t *testing.T) {
			standin.ReplaceFile(t, path, tt.content)
			_, err := c.LoadFile()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file", err)
			}
			assertNoSecret(t, err.Error())
		})
	}

	c.File = filepath.Join(dir, "missing.yaml")
	if _, err := c.LoadFile(); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestScopes(t *testing.T) {
	if len(Scopes()) != 8 {
		t.Fatal(Scopes())
	}
	seen := scopeMask(0)
	for _, s := range Scopes() {
		if !s.Valid() || seen&s.bit() != 0 {
			t.Fatalf("scope %s: bit %b", s, s.bit())
		}
		seen |= s.bit()
	}
	if Scope("metrics").Valid() || Scope("").Valid() {
		t.Fatal("unknown scope valid")
	}
	if !ScopeMetricsRead.MultiTenant() || !ScopeRulesRead.MultiTenant() || ScopeMetricsWrite.MultiTenant() || ScopeAdmin.MultiTenant() {
		t.Fatal("MultiTenant")
	}
}
