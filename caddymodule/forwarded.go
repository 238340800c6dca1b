package caddymodule

import (
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/grafana/dskit/httpgrpc"
)

// forwardedHeaders returns the X-Forwarded-For, X-Forwarded-Proto,
// X-Forwarded-Host and Via headers that Caddy's reverse_proxy would send
// upstream for r (reverseproxy.Handler.addForwardedHeaders and the Via line
// of its prepareRequest, Caddy v2.11), for the gRPC path to tunnel in place
// of the client's, so that a component sees the same values whichever kind
// of backend it sits behind. The client's values are kept only when the
// server trusts the peer (the server's `trusted_proxies`, which Caddy
// evaluates into the TrustedProxyVarKey variable); otherwise they are
// replaced with what the gateway saw. A Values of nil removes the header.
// X-Real-IP and Forwarded pass through untouched, as reverse_proxy does.
func forwardedHeaders(r *http.Request) []httpgrpc.Header {
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	via := httpgrpc.Header{Key: "Via", Values: append(append([]string(nil), r.Header["Via"]...),
		strconv.Itoa(r.ProtoMajor)+"."+strconv.Itoa(r.ProtoMinor)+" Caddy")}

	var clientIP string
	if r.RemoteAddr == "@" {
		// A unix socket peer has no IP: without trust, drop the claims.
		if !trusted {
			return dropForwarded(via)
		}
	} else {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			return dropForwarded(via)
		}
		clientIP, _, _ = strings.Cut(host, "%") // an IPv6 zone
	}

	out := make([]httpgrpc.Header, 0, 4)
	prior, ok, omit := priorHeader(r.Header, "X-Forwarded-For", true)
	switch {
	case omit:
		out = append(out, httpgrpc.Header{Key: "X-Forwarded-For"})
	case trusted && ok && prior != "" && clientIP != "":
		out = append(out, httpgrpc.Header{Key: "X-Forwarded-For", Values: []string{prior + ", " + clientIP}})
	case trusted && ok && prior != "":
		out = append(out, httpgrpc.Header{Key: "X-Forwarded-For", Values: []string{prior}})
	case clientIP != "":
		out = append(out, httpgrpc.Header{Key: "X-Forwarded-For", Values: []string{clientIP}})
	}

	proto := "https"
	if r.TLS == nil {
		proto = "http"
	}
	prior, ok, omit = priorHeader(r.Header, "X-Forwarded-Proto", false)
	if trusted && ok && prior != "" {
		proto = prior
	}
	out = append(out, httpgrpc.Header{Key: "X-Forwarded-Proto", Values: unlessOmitted(omit, proto)})

	host := r.Host
	prior, ok, omit = priorHeader(r.Header, "X-Forwarded-Host", false)
	if trusted && ok && prior != "" {
		host = prior
	}
	out = append(out, httpgrpc.Header{Key: "X-Forwarded-Host", Values: unlessOmitted(omit, host)})
	return append(out, via)
}

// unlessOmitted is []string{v}, or nil (not sent) when omit.
func unlessOmitted(omit bool, v string) []string {
	if omit {
		return nil
	}
	return []string{v}
}

// dropForwarded removes the client's X-Forwarded-* headers.
func dropForwarded(via httpgrpc.Header) []httpgrpc.Header {
	return []httpgrpc.Header{
		{Key: "X-Forwarded-For"}, {Key: "X-Forwarded-Proto"}, {Key: "X-Forwarded-Host"}, via,
	}
}

// priorHeader is reverse_proxy's allHeaderValues (all: the values of field
// joined by ", ") and lastHeaderValue (the last value) in one; omit when an
// earlier handler set the field to nil to keep it from being sent.
func priorHeader(h http.Header, field string, all bool) (value string, ok, omit bool) {
	values, ok := h[field]
	switch {
	case ok && values == nil:
		return "", true, true
	case len(values) == 0:
		return "", false, false
	case all:
		return strings.Join(values, ", "), true, false
	default:
		return values[len(values)-1], true, false
	}
}
