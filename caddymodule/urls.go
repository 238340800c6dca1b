package caddymodule

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
)

// BackendKind says which upstream serves a backend.
type BackendKind string

const (
	// KindHTTP backends are served by Caddy's reverse_proxy.
	KindHTTP BackendKind = "http"
	// KindGRPC backends are served by grpcpush: each request balanced over
	// persistent gRPC connections to every address of the name.
	KindGRPC BackendKind = "grpc"
)

// httpSchemes are the schemes reverse_proxy upstreams take here: h2c is
// cleartext HTTP/2, as Caddy's reverse_proxy spells it.
var httpSchemes = map[string]string{"http": "80", "https": "443", "h2c": "80"}

// ParsedURL is a validated backend URL.
type ParsedURL struct {
	Kind BackendKind
	// Scheme is "http", "https" or "h2c" for HTTP backends, "dns" for gRPC.
	Scheme string
	// Dials are the host:port addresses of an HTTP backend.
	Dials []string
	// Targets are all gRPC targets of a dns: backend, in priority order.
	Targets []string
	// canonical are Targets in canonical form, for comparisons.
	canonical []string
}

// parseDNSTargets checks the URLs of a dns: backend: one or more targets,
// the priority groups in order, each named once, no HTTP URL among them.
func parseDNSTargets(fields []string) (*ParsedURL, error) {
	seen := map[string]bool{}
	canonical := make([]string, 0, len(fields))
	for _, f := range fields {
		if !strings.HasPrefix(f, "dns:") {
			return nil, fmt.Errorf("%q: dns: and HTTP URLs cannot be mixed in one backend", f)
		}
		t, err := grpcpush.ParseTarget(f)
		if err != nil {
			return nil, err
		}
		key := strings.ToLower(t.String()) // dns://10.0.0.1/ is dns://10.0.0.1:53/; names ignore case
		if seen[key] {
			return nil, fmt.Errorf("%q is listed twice", f)
		}
		seen[key] = true
		canonical = append(canonical, key)
	}
	return &ParsedURL{Kind: KindGRPC, Scheme: "dns", Targets: fields, canonical: canonical}, nil
}

// ParseBackendURL checks a backend's url field. Errors say what is wrong
// with the URL; the caller names the field. An HTTP URL may leave out its
// scheme: host:port is http://host:port.
func ParseBackendURL(raw string) (*ParsedURL, error) {
	p, err := parseBackendURL(raw)
	return p, hideUserInfo(raw, err)
}

// hideUserInfo makes sure an error about raw quotes no user info of it:
// each URL is quoted with its password redacted, and should a piece of a
// user info remain (a password holding "://", or split by a space), the
// error says only that the URL is invalid. Config errors reach Caddy's
// admin API answers and logs.
func hideUserInfo(raw string, err error) error {
	if err == nil || !strings.Contains(raw, "@") {
		return err
	}
	msg := err.Error()
	for _, f := range strings.Fields(raw) {
		msg = strings.ReplaceAll(msg, f, redactPassword(f))
	}
	for i := range len(raw) {
		if raw[i] != '@' {
			continue
		}
		// The user info starts after the last "//" before the "@", or, when
		// that leaves no password (one holding "//"), at the start.
		userinfo := raw[max(strings.LastIndex(raw[:i], "//")+2, 0):i]
		if !strings.Contains(userinfo, ":") {
			userinfo = raw[:i]
		}
		_, password, ok := strings.Cut(userinfo, ":")
		if !ok {
			continue // a user name alone is not a secret
		}
		for _, part := range strings.FieldsFunc(password, func(r rune) bool { return r == ':' || r == ' ' || r == '/' }) {
			if len(part) >= 3 && strings.Contains(msg, part) && part != "xxxxx" {
				return errors.New("invalid URL with user info (not shown: it may hold a password)")
			}
		}
	}
	return errors.New(msg)
}

func parseBackendURL(raw string) (*ParsedURL, error) {
	fields := strings.Fields(raw)
	if len(fields) == 0 {
		return nil, fmt.Errorf("no URL given")
	}
	if strings.HasPrefix(fields[0], "dns:") {
		return parseDNSTargets(fields)
	}
	p := &ParsedURL{Kind: KindHTTP}
	for _, f := range fields {
		if strings.HasPrefix(f, "dns:") {
			return nil, fmt.Errorf("%q: dns: and HTTP URLs cannot be mixed in one backend", f)
		}
		scheme, dial, err := parseHTTPURL(f)
		if err != nil {
			return nil, err
		}
		if p.Scheme != "" && p.Scheme != scheme {
			return nil, fmt.Errorf("%q: all URLs of one backend must use the same scheme (%s:// and %s:// mixed)", f, p.Scheme, scheme)
		}
		p.Scheme = scheme
		if slices.Contains(p.Dials, dial) {
			return nil, fmt.Errorf("%q is listed twice", f)
		}
		p.Dials = append(p.Dials, dial)
	}
	return p, nil
}

// addresses are what a backend or mirror sends to: its dns: targets, or
// its HTTP host:port addresses.
func (p *ParsedURL) addresses() []string {
	if p.Kind == KindGRPC {
		return p.canonical
	}
	return p.Dials
}

// redactPassword returns raw with the password of its user info, if any,
// replaced by "xxxxx", as url.URL.Redacted does, but for text that may
// not parse: errors quoting a backend URL reach logs and the admin API.
func redactPassword(raw string) string {
	start := strings.Index(raw, "://") + len("://")
	if start < len("://") {
		start = 0
	}
	// The last "@" of the rest, not only of the authority: a password may
	// hold "/", "?" or "#" (then the URL does not parse), and a backend
	// URL has no path whose "@" this could mistake.
	at := strings.LastIndex(raw[start:], "@")
	if at < 0 {
		return raw
	}
	user, _, hasPassword := strings.Cut(raw[start:start+at], ":")
	if !hasPassword {
		return raw
	}
	return raw[:start] + user + ":xxxxx" + raw[start+at:]
}

// parseHTTPURL checks one HTTP backend URL. Without a scheme
// ("mimir:8080", "10.0.0.7:8080", "mimir") it is http://, as Caddy's
// reverse_proxy reads an upstream address; errors quote it as written,
// a password left out.
func parseHTTPURL(written string) (scheme, dial string, err error) {
	raw := redactPassword(written)
	full := written
	if !strings.Contains(written, "://") {
		full = "http://" + written
	}
	u, err := url.Parse(full)
	if err != nil {
		if raw != written {
			// url.Parse's reason may quote part of the password.
			return "", "", fmt.Errorf("%q is not a URL", raw)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may not be raw
		}
		return "", "", fmt.Errorf("%q is not a URL: %v", raw, err)
	}
	defaultPort, ok := httpSchemes[u.Scheme]
	if !ok {
		return "", "", fmt.Errorf("%q: unsupported scheme %q (use http://, https://, h2c:// or dns:///)", raw, u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return "", "", fmt.Errorf("%q has no host", raw)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "" {
		return "", "", fmt.Errorf("%q: a backend URL is scheme://host[:port] only; the request's own path is sent", raw)
	}
	if u.User != nil {
		return "", "", fmt.Errorf("%q: credentials in backend URLs are not supported; use header_up Authorization in a reverse_proxy block", raw)
	}
	port := u.Port()
	if port == "" {
		port = defaultPort
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", "", fmt.Errorf("%q: invalid port %q (want 1-65535)", raw, port)
	}
	dial = net.JoinHostPort(u.Hostname(), port)
	if _, _, err := net.SplitHostPort(dial); err != nil {
		return "", "", fmt.Errorf("%q: invalid host %q", raw, u.Hostname())
	}
	return u.Scheme, dial, nil
}
