package caddyfile_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/metrics-gateway/metrics_gateway/access"
)

var (
	hashA = access.HashToken("token-a")
	hashB = access.HashToken("token-b")
)

// TestAccessPoliciesAgree adapts a full access_policies block and checks
// that it is exactly the JSON the module documents, and that this JSON
// provisions.
func TestAccessPoliciesAgree(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policies.yaml")
	if err := os.WriteFile(file, []byte("policies:\n  - name: from-file\n    tenants: [team-c]\n    scopes: [metrics:read]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := gatewayHandler(t, fmt.Sprintf(`
http://:8000 {
	metrics_gateway {
		proxy {
			default http://mimir:8080
		}
		access_policies {
			policy team-a-writer {
				tenants team-a
				scopes  metrics:write
				token   %s expires 2027-01-01T00:00:00Z
				token   %s
			}
			policy grafana {
				tenants team-a team-b
				scopes  metrics:read rules:read alerts:read
			}
			policy ops {
				tenants *
				scopes  admin
			}
			file   %s
			realm  "Mimir (prod)"
			oidc {
				issuer        https://idp.example.com/realms/metrics
				audience      metrics-gateway
				policy_claim  mimir_policy
			}
		}
	}
}`, hashA, hashB, file))
	wantJSON := fmt.Sprintf(`{
		"handler": "metrics_gateway",
		"proxy": {"default": {"url": "http://mimir:8080"}},
		"access_policies": {
			"policies": [
				{"name": "team-a-writer", "tenants": ["team-a"], "scopes": ["metrics:write"],
				 "tokens": [{"hash": %q, "expires": "2027-01-01T00:00:00Z"}, {"hash": %q}]},
				{"name": "grafana", "tenants": ["team-a", "team-b"], "scopes": ["metrics:read", "rules:read", "alerts:read"]},
				{"name": "ops", "tenants": ["*"], "scopes": ["admin"]}
			],
			"file": %q,
			"realm": "Mimir (prod)",
			"oidc": {"issuer": "https://idp.example.com/realms/metrics", "audience": "metrics-gateway", "policy_claim": "mimir_policy"}
		}
	}`, hashA, hashB, file)
	var want map[string]any
	if err := json.Unmarshal([]byte(wantJSON), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(h, want) {
		got, _ := json.MarshalIndent(h, "", "\t")
		t.Fatalf("adapted to\n%s", got)
	}
	// The JSON loads as it is (the file is read; nothing is fetched from
	// the issuer until a JWT arrives).
	if err := validateHandler(wantJSON); err != nil {
		t.Fatalf("the JSON does not provision: %v", err)
	}
}

// validateHandler provisions a config with the handler, as `caddy
// validate` or POST /load would.
func validateHandler(handler string) error {
	cfgJSON := `{"admin": {"disabled": true}, "apps": {"http": {"servers": {"s": {"listen": ["127.0.0.1:0"], "routes": [{"handle": [` + handler + `]}]}}}}}`
	var cfg caddy.Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		return err
	}
	return caddy.Validate(&cfg)
}

// TestAccessPoliciesLoadTimeErrors: each mistake fails `caddy adapt` and
// the JSON's provisioning with the same message naming the field, never
// quoting a hash or what was written in its place.
func TestAccessPoliciesLoadTimeErrors(t *testing.T) {
	const token = "N0tAHashButATokenPastedByMistake_0123456789ab"
	cases := []struct {
		name      string
		caddyfile string // the access_policies block's body, or a whole option line
		json      string // the handler's JSON ("" where the mistake is Caddyfile syntax only)
		want      string
	}{
		{"unknown scope",
			"policy a {\n tenants team-a\n scopes metrics:wrte\n token " + hashA + "\n }",
			`"access_policies": {"policies": [{"name": "a", "tenants": ["team-a"], "scopes": ["metrics:wrte"], "tokens": [{"hash": "` + hashA + `"}]}]}`,
			`access_policies.policies[0] (a).scopes: unknown scope "metrics:wrte" (known: metrics:write, metrics:read, metrics:delete, rules:read, rules:write, alerts:read, alerts:write, admin)`},
		{"malformed hash",
			"policy a {\n tenants team-a\n scopes metrics:read\n token " + token + "\n }",
			`"access_policies": {"policies": [{"name": "a", "tenants": ["team-a"], "scopes": ["metrics:read"], "tokens": [{"hash": "` + token + `"}]}]}`,
			`access_policies.policies[0] (a).tokens[0].hash: hash must be "sha256:" followed by 64 hex digits`},
		{"hash not hex",
			"policy a {\n tenants team-a\n scopes metrics:read\n token sha256:" + strings.Repeat("g", 64) + "\n }",
			`"access_policies": {"policies": [{"name": "a", "tenants": ["team-a"], "scopes": ["metrics:read"], "tokens": [{"hash": "sha256:` + strings.Repeat("g", 64) + `"}]}]}`,
			`access_policies.policies[0] (a).tokens[0].hash: hash must be "sha256:" followed by 64 hex digits (it has a character that is not a hex digit)`},
		{"malformed time",
			"policy a {\n tenants team-a\n scopes metrics:read\n token " + hashA + " expires 2027-01-01\n }",
			`"access_policies": {"policies": [{"name": "a", "tenants": ["team-a"], "scopes": ["metrics:read"], "tokens": [{"hash": "` + hashA + `", "expires": "2027-01-01"}]}]}`,
			`access_policies.policies[0] (a).tokens[0].expires: expires "2027-01-01" is not an RFC 3339 time`},
		{"duplicate name",
			"policy a {\n tenants team-a\n scopes metrics:read\n }\n policy a {\n tenants team-b\n scopes metrics:read\n }",
			`"access_policies": {"policies": [{"name": "a", "tenants": ["team-a"], "scopes": ["metrics:read"]}, {"name": "a", "tenants": ["team-b"], "scopes": ["metrics:read"]}]}`,
			`access_policies.policies[1] (a).name: duplicate policy name "a" (also access_policies.policies[0] (a))`},
		{"duplicate hash",
			"policy a {\n tenants team-a\n scopes metrics:read\n token " + hashA + "\n }\n policy b {\n tenants team-b\n scopes metrics:read\n token " + hashA + "\n }",
			`"access_policies": {"policies": [{"name": "a", "tenants": ["team-a"], "scopes": ["metrics:read"], "tokens": [{"hash": "` + hashA + `"}]}, {"name": "b", "tenants": ["team-b"], "scopes": ["metrics:read"], "tokens": [{"hash": "` + hashA + `"}]}]}`,
			`access_policies.policies[1] (b).tokens[0].hash: the same hash is already used by access_policies.policies[0] (a).tokens[0]`},
		{"empty tenants",
			"policy a {\n scopes metrics:read\n }",
			`"access_policies": {"policies": [{"name": "a", "tenants": [], "scopes": ["metrics:read"]}]}`,
			`access_policies.policies[0] (a).tenants: required`},
		{"empty scopes",
			"policy a {\n tenants team-a\n }",
			`"access_policies": {"policies": [{"name": "a", "tenants": ["team-a"]}]}`,
			`access_policies.policies[0] (a).scopes: required`},
		{"invalid tenant",
			"policy a {\n tenants team/a\n scopes metrics:read\n }",
			`"access_policies": {"policies": [{"name": "a", "tenants": ["team/a"], "scopes": ["metrics:read"]}]}`,
			`access_policies.policies[0] (a).tenants[0]: tenant ID 'team/a' contains unsupported character '/'`},
		{"oidc without issuer",
			"oidc {\n audience metrics-gateway\n }",
			`"access_policies": {"oidc": {"audience": "metrics-gateway"}}`,
			`access_policies.oidc.issuer: required`},
		{"oidc issuer not a URL",
			"oidc {\n issuer idp.example.com\n }",
			`"access_policies": {"oidc": {"issuer": "idp.example.com"}}`,
			`access_policies.oidc.issuer: "idp.example.com" is not an absolute http or https URL`},
		{"bad realm",
			`realm "a\"b"`,
			`"access_policies": {"realm": "a\"b"}`,
			`access_policies.realm: must not contain '"'`},
		{"with tenant",
			"policy a {\n tenants team-a\n scopes metrics:read\n }\n }\n tenant {http.auth.user.id}\n access_policies_end {",
			`"access_policies": {"policies": [{"name": "a", "tenants": ["team-a"], "scopes": ["metrics:read"]}]}, "tenant": "{http.auth.user.id}"`,
			`access_policies: not allowed together with tenant`},
		{"with default_tenant",
			"policy a {\n tenants team-a\n scopes metrics:read\n }\n }\n default_tenant anonymous\n access_policies_end {",
			`"access_policies": {"policies": [{"name": "a", "tenants": ["team-a"], "scopes": ["metrics:read"]}]}, "default_tenant": "anonymous"`,
			`access_policies: not allowed together with default_tenant`},
		{"unknown option", "bogus 1", "", `access_policies: unrecognized option "bogus" (policy, file, realm, oidc)`},
		{"unknown policy option", "policy a {\n tenant team-a\n }", "", `access_policies.policies[0] (a): unrecognized option "tenant" (tenants, scopes, token)`},
		{"token pasted on a line of its own", "policy a {\n tenants team-a\n scopes metrics:write\n " + token + "\n }", "", `access_policies.policies[0] (a): unrecognized option on line`},
		{"policy without name", "policy {\n tenants team-a\n }", "", "access_policies.policies[0]: want `policy <name> { ... }`"},
		{"token with a stray word", "policy a {\n tenants team-a\n scopes metrics:read\n token " + hashA + " until 2027-01-01T00:00:00Z\n }", "",
			"access_policies.policies[0] (a).tokens[0]: want `token sha256:<64 hex digits> [expires <RFC 3339 time>]`"},
		{"unknown oidc option", "oidc {\n issuer https://idp\n client_id x\n }", "", `access_policies.oidc: unrecognized option "client_id" (issuer, audience, policy_claim)`},
		{"file twice", "file /a.yaml\n file /b.yaml", "", "access_policies.file: given twice"},
		{"policy file missing", "file /nonexistent/policies.yaml", `"access_policies": {"file": "/nonexistent/policies.yaml"}`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// A body ending in "access_policies_end {" closed the block to
			// set an option after it; the block opened here is dropped.
			caddyfile := ":8000 {\n metrics_gateway {\n proxy {\n default http://a:1\n }\n access_policies {\n " + c.caddyfile + "\n }\n }\n}"
			caddyfile = strings.Replace(caddyfile, "access_policies_end {\n }\n", "", 1)
			_, err := adapt(t, caddyfile)
			switch {
			case c.want == "":
				// Adapting reads no file; loading does.
				if err != nil {
					t.Errorf("adapt: %v", err)
				}
			case err == nil || !strings.Contains(err.Error(), c.want):
				t.Errorf("adapt: got %v\nwant it to contain %q", err, c.want)
			case strings.Contains(err.Error(), token) || strings.Contains(err.Error(), hashA[7:]):
				t.Errorf("adapt: the error quotes a secret: %v", err)
			}
			if c.json == "" {
				return
			}
			want := c.want
			if want == "" {
				want = "access_policies.file: open /nonexistent/policies.yaml: no such file or directory"
			}
			err = validateHandler(`{"handler": "metrics_gateway", "proxy": {"default": {"url": "http://a:1"}}, ` + c.json + `}`)
			switch {
			case err == nil || !strings.Contains(err.Error(), want):
				t.Errorf("JSON: got %v\nwant it to contain %q", err, want)
			case strings.Contains(err.Error(), token) || strings.Contains(err.Error(), hashA[7:]):
				t.Errorf("JSON: the error quotes a secret: %v", err)
			}
		})
	}
	t.Run("two blocks", func(t *testing.T) {
		_, err := adapt(t, ":8000 {\n metrics_gateway {\n proxy {\n default http://a:1\n }\n access_policies {\n }\n access_policies {\n }\n }\n}")
		if err == nil || !strings.Contains(err.Error(), "only one access_policies block is allowed") {
			t.Errorf("got %v", err)
		}
	})
}
