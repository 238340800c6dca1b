package grpcpush

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// defaultDNSPort is the port of a dns://authority/ whose authority has none
// (RFC 4501).
const defaultDNSPort = "53"

// Target is a parsed backend address:
//
//	dns:///host:port            resolve host with the system resolver
//	dns://authority/host:port   resolve host by asking the DNS server at authority
//	dns:///ip:port              one fixed endpoint, nothing to resolve
//
// Every A and AAAA record of host becomes one endpoint ip:port.
type Target struct {
	// Authority is the DNS server (host:port) to ask, "" for the system resolver.
	Authority string
	// Host is the name to resolve, or an IP literal (without brackets).
	Host string
	// Port is the gRPC port of every endpoint.
	Port string
}

// ParseTarget parses a dns: target. Its errors name the target and what is
// wrong with it, because they end up in a config error.
func ParseTarget(s string) (Target, error) {
	rest, ok := strings.CutPrefix(s, "dns:")
	if !ok {
		return Target{}, schemeError(s)
	}
	rest, ok = strings.CutPrefix(rest, "//")
	if !ok {
		return Target{}, fmt.Errorf("target %q: want dns:///host:port or dns://authority/host:port", s)
	}
	if strings.Contains(rest, "@") {
		// Credentials have no meaning here, and an error or the admin
		// view quoting the target would show them.
		return Target{}, fmt.Errorf("target %q: user info (\"user@\") has no place in a dns: target", "dns://"+rest[strings.LastIndex(rest, "@")+1:])
	}
	authority, endpoint, ok := strings.Cut(rest, "/")
	if !ok {
		return Target{}, fmt.Errorf("target %q: no host:port after the authority %q (did you mean dns:///%s?)", s, rest, rest)
	}
	if strings.ContainsAny(endpoint, "/?#") {
		return Target{}, fmt.Errorf("target %q: %q is not host:port", s, endpoint)
	}
	t := Target{}
	if authority != "" {
		a, err := parseAuthority(authority)
		if err != nil {
			return Target{}, fmt.Errorf("target %q: %w", s, err)
		}
		t.Authority = a
	}
	host, port, err := splitHostPort(endpoint)
	if err != nil {
		return Target{}, fmt.Errorf("target %q: %w", s, err)
	}
	t.Host, t.Port = host, port
	return t, nil
}

// schemeError explains a target that does not start with "dns:".
func schemeError(s string) error {
	scheme, _, found := strings.Cut(s, "://")
	if !found || scheme == "" || strings.ContainsAny(scheme, "/:") {
		return fmt.Errorf("target %q has no scheme: want dns:///host:port", s)
	}
	return fmt.Errorf("target %q: unsupported scheme %q: want dns:///host:port", s, scheme)
}

// splitHostPort splits and checks the host:port part of a target.
func splitHostPort(endpoint string) (host, port string, err error) {
	if endpoint == "" {
		return "", "", fmt.Errorf("missing host:port")
	}
	host, port, err = net.SplitHostPort(endpoint)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") {
			return "", "", fmt.Errorf("missing port in %q (want host:port)", endpoint)
		}
		return "", "", fmt.Errorf("%q is not host:port: %v", endpoint, strings.TrimPrefix(err.Error(), "address "+endpoint+": "))
	}
	if host == "" {
		return "", "", fmt.Errorf("missing host in %q", endpoint)
	}
	if port == "" {
		return "", "", fmt.Errorf("missing port in %q (want host:port)", endpoint)
	}
	if err := checkPort(port); err != nil {
		return "", "", err
	}
	if strings.Contains(endpoint, "[") {
		if _, perr := netip.ParseAddr(host); perr != nil {
			return "", "", fmt.Errorf("%q in brackets is not an IPv6 address", host)
		}
	}
	return host, port, nil
}

// checkPort accepts decimal ports 1-65535.
func checkPort(port string) error {
	if port == "" {
		return fmt.Errorf("missing port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("invalid port %q (want 1-65535)", port)
	}
	return nil
}

// parseAuthority checks a DNS server address, adding port 53 when absent.
func parseAuthority(a string) (string, error) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		// No port: a bare host or IP (IPv6 in brackets per RFC 3986).
		host, port = strings.TrimSuffix(strings.TrimPrefix(a, "["), "]"), defaultDNSPort
		if strings.ContainsAny(host, "[]") || (strings.Contains(host, ":") && !strings.HasPrefix(a, "[")) {
			return "", fmt.Errorf("invalid DNS server %q (want host or host:port)", a)
		}
	}
	if host == "" {
		return "", fmt.Errorf("invalid DNS server %q: missing host", a)
	}
	if err := checkPort(port); err != nil {
		return "", fmt.Errorf("invalid DNS server %q: %w", a, err)
	}
	return net.JoinHostPort(host, port), nil
}

// IsIP reports whether Host is an IP literal (a single fixed endpoint).
func (t Target) IsIP() bool {
	_, err := netip.ParseAddr(t.Host)
	return err == nil
}

// Endpoint returns host:port as written in the target.
func (t Target) Endpoint() string { return net.JoinHostPort(t.Host, t.Port) }

// String returns the canonical form, dns://authority/host:port.
func (t Target) String() string {
	return "dns://" + t.Authority + "/" + t.Endpoint()
}
