package caddymodule_test

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// closedPort returns a loopback address nothing listens on: a backend that
// is down.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// TestHTTPBackendErrorsHaveABody checks that a query while the
// query-frontend is down gets one line naming the component and what
// failed: 502 while reverse_proxy tries it, 503 once its passive health
// check has taken the only upstream out.
func TestHTTPBackendErrorsHaveABody(t *testing.T) {
	t.Parallel()
	def := startEchoBackend(t, "default")
	down := "http://" + closedPort(t)
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {
		"default": {"url": %q},
		"query_frontend": {"url": %q, "reverse_proxy": {
			"health_checks": {"passive": {"fail_duration": "1m", "max_fails": 1}}
		}}}}]`, def.URL(), down))

	resp, body, err := c.Get("/prometheus/api/v1/query?query=up")
	if err != nil {
		t.Fatal(err)
	}
	line := string(body)
	if resp.StatusCode != 502 || !strings.HasPrefix(line, "query_frontend "+down+": ") ||
		!strings.Contains(line, "connection refused") || strings.Count(line, "\n") != 1 {
		t.Errorf("backend down: %s %q, want 502 and one line naming query_frontend %s and the refused connection", resp.Status, line, down)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}

	resp, body, err = c.Get("/prometheus/api/v1/query?query=up")
	if err != nil {
		t.Fatal(err)
	}
	if line := string(body); resp.StatusCode != 503 || line != "query_frontend "+down+": no upstreams available\n" ||
		!firstRetryAfter(resp.Header.Get("Retry-After")) {
		t.Errorf("upstream marked unhealthy: %s %q Retry-After %q, want 503 \"query_frontend %s: no upstreams available\" with Retry-After 6 to 9",
			resp.Status, line, resp.Header.Get("Retry-After"), down)
	}

	// Other components are unaffected.
	if resp, _, err := c.Get("/"); err != nil || resp.StatusCode != 200 {
		t.Errorf("gateway root: %v %v", resp, err)
	}
}

// TestHTTPBackendErrorsReachHandleErrors checks that with handle_errors
// the error goes to Caddy's error routes, as any reverse_proxy error does.
func TestHTTPBackendErrorsReachHandleErrors(t *testing.T) {
	t.Parallel()
	down := "http://" + closedPort(t)
	c := testcaddy.StartCaddyfile(t, fmt.Sprintf(`
:80 {
	metrics_gateway {
		proxy {
			default %s
		}
	}
	handle_errors {
		respond "custom error page {err.status_code}" 599
	}
}`, down))
	resp, body, err := c.Get("/prometheus/api/v1/query")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 599 || string(body) != "custom error page 502" {
		t.Errorf("got %s %q, want 599 \"custom error page 502\" from handle_errors", resp.Status, body)
	}
}
