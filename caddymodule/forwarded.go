package caddymodule

import (
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/grafana/dskit/httpgrpc"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
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
	// A header the client's Connection header lists ends at this hop:
	// reverse_proxy removes it before it reads the prior values.
	connection := r.Header["Connection"]
	listed := func(field string) bool { return len(connection) > 0 && grpcpush.ConnectionLists(connection, field) }
	prior := func(field string, all bool) (string, bool, bool) {
		if listed(field) {
			return "", false, false
		}
		return priorHeader(r.Header, field, all)
	}
	var priorVia []string
	if !listed("Via") {
		priorVia = r.Header["Via"]
	}
	via := httpgrpc.Header{Key: "Via", Values: append(append([]string(nil), priorVia...),
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
	value, ok, omit := prior("X-Forwarded-For", true)
	switch {
	case omit:
		out = append(out, httpgrpc.Header{Key: "X-Forwarded-For"})
	case trusted && ok && value != "" && clientIP != "":
		out = append(out, httpgrpc.Header{Key: "X-Forwarded-For", Values: []string{value + ", " + clientIP}})
	case trusted && ok && value != "":
		out = append(out, httpgrpc.Header{Key: "X-Forwarded-For", Values: []string{value}})
	case clientIP != "":
		out = append(out, httpgrpc.Header{Key: "X-Forwarded-For", Values: []string{clientIP}})
	}

	proto := "https"
	if r.TLS == nil {
		proto = "http"
	}
	value, ok, omit = prior("X-Forwarded-Proto", false)
	if trusted && ok && value != "" {
		proto = value
	}
	out = append(out, httpgrpc.Header{Key: "X-Forwarded-Proto", Values: unlessOmitted(omit, proto)})

	host := r.Host
	value, ok, omit = prior("X-Forwarded-Host", false)
	if trusted && ok && value != "" {
		host = value
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
