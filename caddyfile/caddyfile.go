// Package caddyfile registers the metrics_gateway Caddyfile directive and
// turns its tokens into the JSON config of caddymodule.Gateway. It holds no
// runtime logic.
//
//	metrics_gateway [<matcher>] {
//	    proxy {
//	        default        <url>
//	        <component>    <url> [<url>...] [{
//	            # several dns: URLs are priority groups, in order
//	            # for http(s):// and h2c:// URLs: any reverse_proxy subdirective
//	            # for dns: URLs:
//	            refresh          <duration>
//	            timeout          <duration>
//	            retries          <n>
//	            max_request_body <size>
//	            max_buffered_bytes <size>
//	            max_response_body <size>
//	            keepalive        <time> [<timeout>]
//	            compression      gzip|none
//	            lb_policy        round_robin|least_conn
//	            fail_duration    <duration>
//	            max_fails        <n>
//	            unhealthy_status <code|class>...
//	            unhealthy_latency <duration>
//	            min_ready        <n>
//	            tls {
//	                ca                   <file>
//	                cert                 <file>
//	                key                  <file>
//	                server_name          <name>
//	                insecure_skip_verify
//	            }
//	        }]
//	    }
//	    prometheus_http_prefix   <path>
//	    alertmanager_http_prefix <path>
//	    default_tenant           <tenant>
//	    tenant                   <value with placeholders>
//	    retry_after              <min> <max> | off
//	    mirror <url> [<url>...] {
//	        tenants       <tenant>...
//	        percent       <1-100>
//	        max_in_flight <n>
//	        timeout       <duration>
//	        # and every option of a dns: backend
//	    }
//	    access_policies {
//	        policy <name> {
//	            tenants <tenant|*>...
//	            scopes  <scope>...
//	            token   sha256:<64 hex> [expires <RFC 3339 time>]
//	        }
//	        file   <path>
//	        realm  <realm>
//	        oidc {
//	            issuer       <url>
//	            audience     <audience>
//	            policy_claim <claim>
//	        }
//	    }
//	}
package caddyfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	parser "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/dustin/go-humanize"

	"github.com/metrics-gateway/metrics_gateway/caddymodule"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("metrics_gateway", parseDirective)
	// Before reverse_proxy, so the directive works in a plain site block
	// without an `order` global option or a `route` block.
	httpcaddyfile.RegisterDirectiveOrder("metrics_gateway", httpcaddyfile.Before, "reverse_proxy")
}

func parseDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	g := new(caddymodule.Gateway)
	if err := unmarshalGateway(h, g); err != nil {
		return nil, err
	}
	return g, nil
}

// unmarshalGateway fills g from the directive's tokens.
func unmarshalGateway(h httpcaddyfile.Helper, g *caddymodule.Gateway) error {
	d := h.Dispenser
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	sawProxy := false
	seen := onceEach{}
	for d.NextBlock(0) {
		opt := d.Val()
		if opt != "mirror" && opt != "proxy" && opt != "access_policies" { // those say it their own way
			if err := seen.check(d, "", opt); err != nil {
				return err
			}
		}
		switch opt {
		case "proxy":
			if sawProxy {
				return d.Err("proxy: only one proxy block is allowed")
			}
			sawProxy = true
			if err := unmarshalProxy(h, &g.Proxy); err != nil {
				return err
			}
		case "prometheus_http_prefix", "alertmanager_http_prefix", "default_tenant", "tenant":
			target := map[string]*string{"prometheus_http_prefix": &g.PrometheusHTTPPrefix,
				"alertmanager_http_prefix": &g.AlertmanagerHTTPPrefix, "default_tenant": &g.DefaultTenant, "tenant": &g.Tenant}[opt]
			if err := stringArg(d, target); err != nil {
				return d.Errf("%s: %v", opt, err)
			}
		case "access_policies":
			if g.AccessPolicies != nil {
				return d.Err("access_policies: only one access_policies block is allowed")
			}
			cfg, err := unmarshalAccess(d)
			if err != nil {
				return err
			}
			g.AccessPolicies = cfg
		case "mirror":
			var m caddymodule.MirrorConfig
			if err := unmarshalMirror(d, &m); err != nil {
				return err
			}
			g.Mirrors = append(g.Mirrors, m)
		case "retry_after":
			ra, err := retryAfterArgs(d)
			if err != nil {
				return d.Errf("retry_after: %v", err)
			}
			g.RetryAfter = ra
		default:
			return d.Errf("unrecognized metrics_gateway option %q", opt)
		}
	}
	if !sawProxy {
		return d.Err("metrics_gateway: a proxy block is required")
	}
	// The module's own checks, so that adapting fails where loading would.
	if err := g.CheckConfig(); err != nil {
		return d.Errf("%v", err)
	}
	return nil
}

// unmarshalProxy fills p from a proxy block: one line (and optional
// sub-block) per component.
func unmarshalProxy(h httpcaddyfile.Helper, p *caddymodule.ProxyConfig) error {
	d := h.Dispenser
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[caddymodule.Component]int{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		c, ok := caddymodule.ParseComponent(name)
		if !ok {
			return d.Errf("proxy: unknown component %q (known: %s)", name, componentList())
		}
		if line, dup := seen[c]; dup {
			return d.Errf("proxy: component %s is configured twice (first on line %d)", c, line)
		}
		seen[c] = d.Line()
		b, err := unmarshalBackend(h, c, d.NextSegment())
		if err != nil {
			return err
		}
		p.Set(c, b)
	}
	if len(seen) == 0 {
		return d.Err("proxy: empty proxy block; set at least `default <url>`")
	}
	return nil
}

// unmarshalBackend parses one component line: URLs and an optional block,
// which belongs to reverse_proxy for HTTP URLs and to the gRPC upstream for
// dns: URLs.
func unmarshalBackend(h httpcaddyfile.Helper, c caddymodule.Component, seg parser.Segment) (*caddymodule.Backend, error) {
	d := parser.NewDispenser(seg)
	d.Next()
	urls := d.RemainingArgs()
	if len(urls) == 0 {
		return nil, d.Errf("proxy.%s: missing URL", c)
	}
	b := &caddymodule.Backend{URL: strings.Join(urls, " ")}
	u, err := caddymodule.ParseBackendURL(b.URL)
	if err != nil {
		return nil, d.Errf("proxy.%s.url: %v", c, err)
	}
	hasBlock := len(seg) > 1+len(urls)
	if !hasBlock {
		return b, nil
	}
	if u.Kind == caddymodule.KindGRPC {
		b.GRPC = new(caddymodule.GRPCConfig)
		return b, unmarshalGRPC(d, c, b.GRPC)
	}
	b.ReverseProxy, err = unmarshalReverseProxy(h, seg, len(urls))
	return b, err
}

// unmarshalReverseProxy hands a backend's block to reverse_proxy's own
// Caddyfile parser, as if it were written `reverse_proxy { ... }`. The URLs
// stay in the url field, so they are not parsed as upstreams here.
func unmarshalReverseProxy(h httpcaddyfile.Helper, seg parser.Segment, nURLs int) (json.RawMessage, error) {
	head := seg[0]
	head.Text = "reverse_proxy"
	tokens := append(parser.Segment{head}, seg[1+nURLs:]...)
	rp := new(reverseproxy.Handler)
	if err := rp.UnmarshalCaddyfile(parser.NewDispenser(tokens)); err != nil {
		return nil, err
	}
	if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	return caddyconfig.JSON(rp, nil), nil
}

// unmarshalGRPC parses a dns: backend's block. Values are only parsed
// here; whether they are allowed is caddymodule's rule (CheckConfig).
func unmarshalGRPC(d *parser.Dispenser, c caddymodule.Component, cfg *caddymodule.GRPCConfig) error {
	seen := onceEach{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := seen.check(d, "proxy."+string(c)+".grpc.", opt); err != nil {
			return err
		}
		known, err := grpcOption(d, opt, cfg)
		if !known {
			return d.Errf("proxy.%s: unrecognized option %q for a dns: backend (%s)", c, opt, grpcOptionNames)
		}
		if err != nil {
			return d.Errf("proxy.%s.grpc.%s: %v", c, opt, err)
		}
	}
	return nil
}

// grpcOptionNames are the options of a dns: backend's block.
const grpcOptionNames = "refresh, timeout, retries, max_request_body, max_buffered_bytes, max_response_body, keepalive, compression, tls, lb_policy, fail_duration, max_fails, unhealthy_status, unhealthy_latency, min_ready"

// grpcOption parses one option of a dns: block into cfg; known is false
// for an option it does not know.
func grpcOption(d *parser.Dispenser, opt string, cfg *caddymodule.GRPCConfig) (known bool, err error) {
	switch opt {
	case "refresh":
		cfg.Refresh, err = durationArg(d)
	case "timeout":
		cfg.Timeout, err = durationArg(d)
	case "retries":
		var n int
		n, err = intArg(d)
		cfg.Retries = &n
	case "max_request_body":
		cfg.MaxRequestBody, err = sizeArg(d)
	case "max_buffered_bytes":
		cfg.MaxBufferedBytes, err = sizeArg(d)
	case "max_response_body":
		cfg.MaxResponseBody, err = sizeArg(d)
	case "keepalive":
		args := d.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return true, errArgCount
		}
		cfg.KeepaliveTime, err = parseDuration(args[0])
		if err == nil && len(args) == 2 {
			cfg.KeepaliveTimeout, err = parseDuration(args[1])
		}
	case "compression":
		err = stringArg(d, &cfg.Compression)
		if cfg.Compression == "none" || cfg.Compression == "off" {
			cfg.Compression = ""
		}
	case "tls":
		cfg.TLS = new(caddymodule.GRPCTLSConfig)
		err = unmarshalTLS(d, cfg.TLS)
	case "lb_policy":
		err = stringArg(d, &cfg.LBPolicy)
	case "fail_duration":
		cfg.FailDuration, err = durationArg(d)
	case "max_fails":
		cfg.MaxFails, err = intArg(d)
	case "unhealthy_status":
		cfg.UnhealthyStatus, err = statusArgs(d)
	case "unhealthy_latency":
		cfg.UnhealthyLatency, err = durationArg(d)
	case "min_ready":
		cfg.MinReady, err = intArg(d)
	default:
		return false, nil
	}
	return true, err
}

// unmarshalMirror parses `mirror <url>... { ... }`: the mirror's own
// options and those of a dns: backend.
func unmarshalMirror(d *parser.Dispenser, m *caddymodule.MirrorConfig) error {
	m.URL = d.RemainingArgs()
	if len(m.URL) == 0 {
		return d.Err("mirror: missing URL")
	}
	seen := onceEach{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := seen.check(d, "mirror.", opt); err != nil {
			return err
		}
		var err error
		switch opt {
		case "tenants":
			if m.Tenants = d.RemainingArgs(); len(m.Tenants) == 0 {
				err = errArgCount
			}
		case "percent":
			var n int
			n, err = intArg(d)
			m.Percent = &n
		case "max_in_flight":
			m.MaxInFlight, err = intArg(d)
		default:
			var known bool
			if known, err = grpcOption(d, opt, &m.GRPCConfig); !known {
				return d.Errf("mirror: unrecognized option %q (tenants, percent, max_in_flight, and those of a dns: backend: %s)", opt, grpcOptionNames)
			}
		}
		if err != nil {
			return d.Errf("mirror.%s: %v", opt, err)
		}
	}
	return nil
}

// errArgCount is a missing or extra argument.
var errArgCount = errors.New("wrong number of arguments")

// errEmpty is an argument that is "": written so, or an environment
// variable ({$TENANT}) that is empty or unset. Taken as "not set", it would
// quietly change what the option guards (an empty tenant lets clients pick
// theirs).
var errEmpty = errors.New(`empty value (an empty or unset environment variable?); leave the option out for its default`)

// stringArg reads the one argument of an option into v; it must not be
// empty.
func stringArg(d *parser.Dispenser, v *string) error {
	if !d.AllArgs(v) {
		return errArgCount
	}
	if *v == "" {
		return errEmpty
	}
	return nil
}

// onceEach refuses an option given twice in one block: the second would
// silently replace the first (a second tls block dropping the first's ca).
type onceEach map[string]bool

func (s onceEach) check(d *parser.Dispenser, where, opt string) error {
	if s[opt] {
		return d.Errf("%s%s: given twice", where, opt)
	}
	s[opt] = true
	return nil
}

// intArg reads the one integer argument of an option.
func intArg(d *parser.Dispenser) (int, error) {
	var s string
	if err := stringArg(d, &s); err != nil {
		return 0, err
	}
	return strconv.Atoi(s)
}

// retryAfterArgs reads `retry_after <min> <max>` or `retry_after off`.
func retryAfterArgs(d *parser.Dispenser) (*caddymodule.RetryAfterConfig, error) {
	args := d.RemainingArgs()
	switch {
	case len(args) == 1 && args[0] == "off":
		return &caddymodule.RetryAfterConfig{Off: true}, nil
	case len(args) != 2:
		return nil, fmt.Errorf("want <min> <max> (e.g. 6s 96s) or off")
	}
	lo, err := parseDuration(args[0])
	if err != nil {
		return nil, err
	}
	hi, err := parseDuration(args[1])
	if err != nil {
		return nil, err
	}
	return &caddymodule.RetryAfterConfig{Min: lo, Max: hi}, nil
}

// sizeArg reads one size argument ("100MiB", "1000").
func sizeArg(d *parser.Dispenser) (int64, error) {
	var size string
	if err := stringArg(d, &size); err != nil {
		return 0, err
	}
	n, err := humanize.ParseBytes(size)
	return int64(n), err
}

func unmarshalTLS(d *parser.Dispenser, t *caddymodule.GRPCTLSConfig) error {
	return unmarshalStrings(d, "tls", []stringOption{
		{"ca", &t.CA}, {"cert", &t.Cert}, {"key", &t.Key}, {"server_name", &t.ServerName},
		{"insecure_skip_verify", &t.InsecureSkipVerify},
	})
}

// stringOption is an option of a block that unmarshalStrings parses: its
// value goes to a *string, or, for a *bool, the option alone sets it.
type stringOption struct {
	name   string
	target any // *string or *bool
}

// unmarshalStrings parses a block whose every option takes one value (or,
// for a flag, none). where names the block in an error.
func unmarshalStrings(d *parser.Dispenser, where string, options []stringOption) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := onceEach{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if err := seen.check(d, where+".", opt); err != nil {
			return err
		}
		i := slices.IndexFunc(options, func(o stringOption) bool { return o.name == opt })
		if i < 0 {
			names := make([]string, len(options))
			for j, o := range options {
				names[j] = o.name
			}
			return d.Errf("%s: unrecognized option %q (%s)", where, opt, strings.Join(names, ", "))
		}
		switch target := options[i].target.(type) {
		case *bool:
			if d.NextArg() {
				return d.ArgErr()
			}
			*target = true
		case *string:
			if !d.AllArgs(target) {
				return d.ArgErr()
			}
			if *target == "" {
				return d.Errf("%s.%s: %v", where, opt, errEmpty)
			}
		default:
			panic(fmt.Sprintf("option %s: target %T is neither *string nor *bool", opt, target))
		}
	}
	return nil
}

// statusArgs parses reverse_proxy's status list: codes (503) and classes
// (5xx, stored as 5).
func statusArgs(d *parser.Dispenser) ([]int, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.ArgErr()
	}
	codes := make([]int, 0, len(args))
	for _, a := range args {
		if len(a) == 3 && strings.HasSuffix(a, "xx") && a[0] >= '1' && a[0] <= '5' {
			codes = append(codes, int(a[0]-'0'))
			continue
		}
		code, err := strconv.Atoi(a)
		if err != nil || code < 100 || code > 599 {
			return nil, fmt.Errorf("%q: want a status 100-599 or a class like 5xx", a)
		}
		codes = append(codes, code)
	}
	return codes, nil
}

func durationArg(d *parser.Dispenser) (caddy.Duration, error) {
	var s string
	if err := stringArg(d, &s); err != nil {
		return 0, err
	}
	return parseDuration(s)
}

func parseDuration(s string) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if dur <= 0 {
		return 0, errNotPositive{s}
	}
	return caddy.Duration(dur), nil
}

type errNotPositive struct{ s string }

func (e errNotPositive) Error() string { return "duration " + e.s + " must be positive" }

func componentList() string {
	names := make([]string, len(caddymodule.Components))
	for i, c := range caddymodule.Components {
		names[i] = string(c)
	}
	return strings.Join(names, ", ")
}
