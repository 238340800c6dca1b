package caddyfile

import (
	"fmt"
	"strings"

	parser "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/metrics-gateway/metrics_gateway/access"
)

// unmarshalAccess parses an access_policies block into access.Config. It
// only parses: every rule (known scopes, hashes, times, unique names) is
// access.Config.Validate's, called through the module's CheckConfig, so
// that the Caddyfile and JSON are refused alike.
//
//	access_policies {
//	    policy <name> {
//	        tenants <tenant|*>...
//	        scopes  <scope>...
//	        token   sha256:<64 hex> [expires <RFC 3339 time>]
//	    }
//	    file   <path>
//	    realm  <realm>
//	    oidc {
//	        issuer       <url>
//	        audience     <audience>
//	        policy_claim <claim>
//	    }
//	}
func unmarshalAccess(d *parser.Dispenser) (*access.Config, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	cfg := new(access.Config)
	seen := onceEach{}
	once := func(opt string) error { return seen.check(d, "access_policies.", opt) }
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "policy":
			p, err := unmarshalPolicy(d, len(cfg.Policies))
			if err != nil {
				return nil, err
			}
			cfg.Policies = append(cfg.Policies, p)
		case "file", "realm":
			if err := once(opt); err != nil {
				return nil, err
			}
			var v string
			if err := stringArg(d, &v); err != nil {
				return nil, d.Errf("access_policies.%s: %v", opt, err)
			}
			if opt == "file" {
				cfg.File = v
			} else {
				cfg.Realm = v
			}
		case "oidc":
			if err := once(opt); err != nil {
				return nil, err
			}
			o, err := unmarshalOIDC(d)
			if err != nil {
				return nil, err
			}
			cfg.OIDC = o
		default:
			return nil, d.Errf("access_policies: unrecognized option %q (policy, file, realm, oidc)", opt)
		}
	}
	return cfg, nil
}

// unmarshalPolicy parses `policy <name> { ... }`, the i-th policy.
func unmarshalPolicy(d *parser.Dispenser, i int) (access.Policy, error) {
	var p access.Policy
	if !d.NextArg() {
		return p, d.Errf("access_policies.policies[%d]: want `policy <name> { ... }`", i)
	}
	p.Name = d.Val()
	if d.NextArg() {
		return p, d.ArgErr()
	}
	where := fmt.Sprintf("access_policies.policies[%d] (%s)", i, p.Name)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "tenants", "scopes":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return p, d.Errf("%s.%s: want one or more values", where, opt)
			}
			if opt == "tenants" {
				p.Tenants = append(p.Tenants, args...)
			} else {
				p.Scopes = append(p.Scopes, args...)
			}
		case "token":
			// Never quote the arguments: they may be a token pasted in place
			// of its hash.
			args := d.RemainingArgs()
			tok := access.Token{}
			switch {
			case len(args) == 1:
				tok.Hash = args[0]
			case len(args) == 3 && args[1] == "expires":
				tok.Hash, tok.Expires = args[0], args[2]
			default:
				return p, d.Errf("%s.tokens[%d]: want `token sha256:<64 hex digits> [expires <RFC 3339 time>]`", where, len(p.Tokens))
			}
			p.Tokens = append(p.Tokens, tok)
		default:
			// Quoted only if it looks like an option name: it may be a token
			// pasted on a line of its own.
			if len(opt) <= 20 && strings.Trim(opt, "abcdefghijklmnopqrstuvwxyz_") == "" {
				return p, d.Errf("%s: unrecognized option %q (tenants, scopes, token)", where, opt)
			}
			return p, d.Errf("%s: unrecognized option on line %d (not shown, in case it is a token; want tenants, scopes or token)", where, d.Line())
		}
	}
	return p, nil
}

// unmarshalOIDC parses an oidc block.
func unmarshalOIDC(d *parser.Dispenser) (*access.OIDCConfig, error) {
	o := new(access.OIDCConfig)
	err := unmarshalStrings(d, "access_policies.oidc", []stringOption{
		{"issuer", &o.Issuer}, {"audience", &o.Audience}, {"policy_claim", &o.PolicyClaim},
	})
	return o, err
}
