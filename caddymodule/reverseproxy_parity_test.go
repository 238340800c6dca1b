package caddymodule_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// proxyProtocolClient is a client whose every connection starts with a
// PROXY protocol v1 line claiming clientIP, so that Caddy (with the
// proxy_protocol listener wrapper) sees that peer address, as behind a load
// balancer. One connection per request.
func proxyProtocolClient(c *testcaddy.Caddy, clientIP string) *http.Client {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", c.HTTPSock)
			if err != nil {
				return nil, err
			}
			if _, err := fmt.Fprintf(conn, "PROXY TCP4 %s 192.0.2.1 40000 8000\r\n", clientIP); err != nil {
				conn.Close()
				return nil, err
			}
			return conn, nil
		},
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// parityCaddyfile serves /via-http/... through an HTTP distributor
// (reverse_proxy) and everything else through a gRPC one.
const parityCaddyfile = `{
	servers {
		listener_wrappers {
			proxy_protocol
		}
		%s
	}
}
:8000 {
	handle_path /via-http/* {
		metrics_gateway {
			proxy {
				default     http://127.0.0.1:1
				distributor %s
			}
		}
	}
	handle {
		metrics_gateway {
			proxy {
				default     http://127.0.0.1:1
				distributor %s
			}
		}
	}
}`

// TestForwardedHeadersParity: a client at 203.0.113.7 pushes through both
// kinds of backend; the distributor sees the same X-Forwarded-*, Via,
// X-Real-IP and Forwarded on both paths. Without trusted_proxies the
// client's X-Forwarded-* claims are replaced by what the gateway saw; with
// the client's address trusted they are kept and extended, as reverse_proxy
// does. Two X-Scope-OrgID lines are refused with 400 on both paths.
func TestForwardedHeadersParity(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	cl.Distributors[0].KeepRecords(100)
	viaHTTP := standin.NewDistributor("http")
	viaHTTP.KeepRecords(100)
	srv := httptest.NewServer(viaHTTP)
	t.Cleanup(srv.Close)

	spoofed := http.Header{
		"X-Forwarded-For":   {"1.2.3.4"},
		"X-Forwarded-Proto": {"https"},
		"X-Forwarded-Host":  {"evil.example"},
		"X-Real-Ip":         {"1.2.3.4"},
		"Forwarded":         {"for=1.2.3.4"},
	}
	compared := []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-Ip", "Forwarded", "Via"}
	for _, tc := range []struct {
		name, trusted string
		sent          http.Header
		wantXFF       string
		wantProto     string
		wantHost      string
	}{
		{"untrusted, spoofed", "", spoofed, "203.0.113.7", "http", "gateway"},
		{"untrusted, none sent", "", http.Header{}, "203.0.113.7", "http", "gateway"},
		{"trusted, forwarded", "trusted_proxies static 203.0.113.0/24", spoofed, "1.2.3.4, 203.0.113.7", "https", "evil.example"},
		{"trusted, none sent", "trusted_proxies static 203.0.113.0/24", http.Header{}, "203.0.113.7", "http", "gateway"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testcaddy.StartCaddyfile(t, fmt.Sprintf(parityCaddyfile, tc.trusted, srv.URL, cl.Target()))
			client := proxyProtocolClient(c, "203.0.113.7")
			got := map[string]http.Header{}
			for _, path := range []string{"/via-http/api/v1/push", "/api/v1/push"} {
				req := pushRequest(t, path, tc.sent)
				resp, body, err := do(client, req)
				if err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("%s: %v %v %s", path, err, resp, body)
				}
			}
			got["http"] = last(t, viaHTTP).Header
			got["grpc"] = last(t, cl.Distributors[0]).Header
			for _, k := range compared {
				if h, g := strings.Join(got["http"][k], " | "), strings.Join(got["grpc"][k], " | "); h != g {
					t.Errorf("%s: reverse_proxy sent %q, the gRPC path %q", k, h, g)
				}
			}
			g := got["grpc"]
			if g.Get("X-Forwarded-For") != tc.wantXFF || g.Get("X-Forwarded-Proto") != tc.wantProto || g.Get("X-Forwarded-Host") != tc.wantHost {
				t.Errorf("X-Forwarded-For/-Proto/-Host = %q %q %q, want %q %q %q", g.Get("X-Forwarded-For"),
					g.Get("X-Forwarded-Proto"), g.Get("X-Forwarded-Host"), tc.wantXFF, tc.wantProto, tc.wantHost)
			}
			if g.Get("X-Real-Ip") != tc.sent.Get("X-Real-Ip") || g.Get("Forwarded") != tc.sent.Get("Forwarded") {
				t.Errorf("X-Real-IP %q, Forwarded %q: not passed through", g.Get("X-Real-Ip"), g.Get("Forwarded"))
			}

			// Two tenant header lines: 400 on both paths, nothing reaches a backend.
			before := viaHTTP.Requests() + cl.Distributors[0].Requests()
			for _, path := range []string{"/via-http/api/v1/push", "/api/v1/push"} {
				req := pushRequest(t, path, nil)
				req.Header["X-Scope-Orgid"] = []string{"tenant-1", "tenant-2"}
				resp, body, err := do(client, req)
				if err != nil || resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "multiple X-Scope-OrgID headers") {
					t.Errorf("%s with two tenants: %v %v %q", path, err, resp, body)
				}
			}
			if n := viaHTTP.Requests() + cl.Distributors[0].Requests(); n != before {
				t.Errorf("%d requests with two tenants reached a distributor", n-before)
			}
		})
	}
}

// do sends req with client and reads the whole response.
func do(client *http.Client, req *http.Request) (*http.Response, []byte, error) {
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// pushRequest is a Remote-Write push to path with extra headers.
func pushRequest(t *testing.T, path string, extra http.Header) *http.Request {
	t.Helper()
	req := standin.NewPush("http://gateway"+path, standin.RemoteWriteBody(10, 1), "tenant-1")
	for k, v := range extra {
		req.Header[k] = v
	}
	return req
}

func last(t *testing.T, d *standin.Distributor) standin.Record {
	t.Helper()
	recs := d.Records()
	if len(recs) == 0 {
		t.Fatalf("%s received nothing", d.Name())
	}
	return recs[len(recs)-1]
}

// TestGRPCResponseLimit: an answer larger than max_response_body is the
// backend's failure (502 naming it), a request larger than max_request_body
// the client's (413, no call); by default a 3 MiB answer passes even with a
// small max_request_body.
func TestGRPCResponseLimit(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	large := bytes.Repeat([]byte("x"), 3<<20)
	cl.Distributors[0].SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/distributor/large" {
			return false
		}
		_, _ = w.Write(large)
		return true
	})
	get := func(c *testcaddy.Caddy) (*http.Response, []byte) {
		// A few tries: right after a reload, the old server may still take
		// a new connection and close it unread (see pushRetrying).
		var err error
		for range 5 {
			req, _ := http.NewRequest(http.MethodGet, "http://gateway/distributor/large", nil)
			req.Header.Set("X-Scope-OrgID", "tenant-1")
			var resp *http.Response
			var body []byte
			if resp, body, err = c.Do(req); err == nil {
				return resp, body
			}
		}
		t.Fatal(err)
		return nil, nil
	}

	c := testcaddy.Start(t, cl.handlerJSON(`"max_request_body": 1000`))
	if resp, body := get(c); resp.StatusCode != http.StatusOK || len(body) != len(large) {
		t.Fatalf("3 MiB answer with the default response limit: %s, %d bytes", resp.Status, len(body))
	}

	if err := c.Reload(cl.handlerJSON(`"max_request_body": 1000, "max_response_body": 1048576`)); err != nil {
		t.Fatal(err)
	}
	resp, body := get(c)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "distributor") ||
		!strings.Contains(string(body), "response larger than 1048576 bytes") {
		t.Fatalf("3 MiB answer over max_response_body: %s %q", resp.Status, body)
	}
	calls := cl.Servers[0].Calls()
	req, _ := http.NewRequest(http.MethodPost, "http://gateway/api/v1/push", bytes.NewReader(make([]byte, 2000)))
	req.Header.Set("X-Scope-OrgID", "tenant-1")
	resp, body, err := c.Do(req)
	if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("2000-byte request over max_request_body: %v %v %q", err, resp, body)
	}
	if n := cl.Servers[0].Calls() - calls; n != 0 {
		t.Fatalf("%d calls for a request over the limit", n)
	}
}

// TestHopByHopResponseHeadersParity: a header the component's answer names
// in Connection, and Alt-Svc (the component's own alternative services),
// are not relayed, as reverse_proxy drops them; others are. Checked on the
// gRPC path and on reverse_proxy's.
func TestHopByHopResponseHeadersParity(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	cl.Distributors[0].SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Connection", "X-Hop-Secret")
		w.Header().Set("X-Hop-Secret", "for the next hop only")
		w.Header().Set("Alt-Svc", `h3=":9443"; ma=86400`)
		w.Header().Set("X-End-To-End", "kept")
		w.WriteHeader(http.StatusOK)
		return true
	})
	overHTTP := httptest.NewServer(cl.Distributors[0])
	t.Cleanup(overHTTP.Close)
	for _, distributor := range []string{cl.Target(), overHTTP.URL} {
		c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {
			"default": {"url": "http://127.0.0.1:1"}, "distributor": {"url": %q}}}]`, distributor))
		req, _ := http.NewRequest(http.MethodGet, "http://gateway/distributor/x", nil)
		req.Header.Set("X-Scope-OrgID", "tenant-1")
		resp, _, err := c.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %v %v", distributor, err, resp)
		}
		for _, hop := range []string{"X-Hop-Secret", "Alt-Svc"} {
			if v := resp.Header.Get(hop); v != "" {
				t.Errorf("%s: %s relayed: %q", distributor, hop, v)
			}
		}
		if v := resp.Header.Get("X-End-To-End"); v != "kept" {
			t.Errorf("%s: X-End-To-End = %q", distributor, v)
		}
		if err := caddy.Stop(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGRPCSlowUploadEndsAtTimeout: a client that announces a body and sends
// only part of it is answered 408 once the timeout, counted from the start
// of the request, has passed; no call is made.
func TestGRPCSlowUploadEndsAtTimeout(t *testing.T) {
	cl := startCluster(t, 1)
	c := testcaddy.Start(t, cl.handlerJSON(`"timeout": "1s"`))
	conn, err := net.Dial("unix", c.HTTPSock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST /api/v1/push HTTP/1.1\r\nHost: gateway\r\nX-Scope-OrgID: tenant-1\r\nContent-Length: 1000\r\n\r\n%s", strings.Repeat("x", 10))
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second)) // a bound for a broken gateway, not the assertion
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to the stalled upload: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "not received within 1s") {
		t.Fatalf("stalled upload: %s %q", resp.Status, body)
	}
	if elapsed := time.Since(start); elapsed < time.Second {
		t.Fatalf("answered after %v, before the timeout", elapsed)
	}
	if n := cl.Servers[0].Calls(); n != 0 {
		t.Fatalf("%d calls for an incomplete body", n)
	}
}

// TestTunnelParity: requests and answers that the gRPC tunnel used to
// carry differently from reverse_proxy, tried through both kinds of
// backend in front of the same stand-in: a raw UTF-8 query (grpc-go
// refused it as metadata: 500), an absolute-form target with credentials
// (tunnelled verbatim), a Via the client's Connection header lists (kept),
// a site's Set-Cookie beside the component's (replaced), and the
// component's Content-Length for HEAD (dropped).
func TestTunnelParity(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	d := cl.Distributors[0]
	d.KeepRecords(100)
	d.SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Add("Set-Cookie", "component=1")
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", "1234")
			w.WriteHeader(http.StatusOK)
			return true
		}
		_, _ = io.WriteString(w, "q="+r.URL.Query().Get("q"))
		return true
	})
	overHTTP := httptest.NewServer(d)
	t.Cleanup(overHTTP.Close)
	for _, distributor := range []string{cl.Target(), overHTTP.URL} {
		c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "headers", "response": {"add": {"Set-Cookie": ["site=1"]}}},
			{"handler": "metrics_gateway", "proxy": {"default": {"url": "http://127.0.0.1:1"}, "distributor": {"url": %q}}}]`, distributor))
		raw := func(method, target string, extra string) (*http.Response, string) {
			conn := dialRaw(t, c)
			if _, err := fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: gateway\r\nX-Scope-OrgID: tenant-1\r\n%s\r\n", method, target, extra); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
			resp, err := http.ReadResponse(conn.r, &http.Request{Method: method})
			if err != nil {
				t.Fatalf("%s %s %s: %v", distributor, method, target, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp, string(b)
		}

		resp, body := raw(http.MethodGet, "/distributor/x?q=caf\xc3\xa9", "")
		if resp.StatusCode != http.StatusOK || body != "q=caf\xc3\xa9" {
			t.Errorf("%s: raw UTF-8 query: %s %q", distributor, resp.Status, body)
		}
		if got := resp.Header.Values("Set-Cookie"); strings.Join(got, " ") != "site=1 component=1" {
			t.Errorf("%s: Set-Cookie %q, want the site's and the component's", distributor, got)
		}

		if resp, _ = raw(http.MethodGet, "http://user:secret@other.example/distributor/x", ""); resp.StatusCode != http.StatusOK {
			t.Errorf("%s: absolute-form target: %s", distributor, resp.Status)
		} else if rec := last(t, d); rec.URL != "/distributor/x" {
			t.Errorf("%s: absolute-form target reached the component as %q", distributor, rec.URL)
		}

		if resp, _ = raw(http.MethodGet, "/distributor/x", "Via: 1.1 secret-hop\r\nConnection: Via\r\n"); resp.StatusCode != http.StatusOK {
			t.Errorf("%s: Via in Connection: %s", distributor, resp.Status)
		} else if via := last(t, d).Header.Values("Via"); strings.Contains(strings.Join(via, " "), "secret-hop") {
			t.Errorf("%s: a Via the Connection header lists went on: %q", distributor, via)
		}

		if resp, _ = raw(http.MethodHead, "/distributor/x", ""); resp.StatusCode != http.StatusOK || resp.ContentLength != 1234 {
			t.Errorf("%s: HEAD: %s, Content-Length %d, want the component's 1234", distributor, resp.Status, resp.ContentLength)
		}
		if err := caddy.Stop(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHTTPBackendSlowUpload: a body that does not arrive within the
// server's read_body, or ends before its Content-Length, gets 408 or 400
// with the gateway's line on an HTTP backend too, as on the gRPC path, not
// reverse_proxy's empty 499 (a 4xx a remote-write client drops silently,
// for a client still waiting for an answer).
func TestHTTPBackendSlowUpload(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(backend.Close)
	c := testcaddy.StartJSON(t, func(c *testcaddy.Caddy) string {
		return fmt.Sprintf(`{"admin": {"listen": "unix/%s", "config": {"persist": false}},
		"apps": {"http": {"servers": {"gateway": {"listen": ["unix/%s"], "automatic_https": {"disable": true}, "read_timeout": "1s",
			"routes": [{"handle": [{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}}}]}]}}}}}`,
			c.AdminSock, c.HTTPSock, backend.URL)
	})
	for _, tc := range []struct {
		name      string
		halfClose bool
		want      int
	}{
		{"body slower than read_body", false, http.StatusRequestTimeout},
		{"body cut short", true, http.StatusBadRequest},
	} {
		conn, err := net.Dial("unix", c.HTTPSock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: gw\r\nX-Scope-OrgID: a\r\nContent-Length: 1000\r\n\r\n0123456789", standin.PushPath)
		if tc.halfClose {
			_ = conn.(*net.UnixConn).CloseWrite()
		}
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != tc.want || !strings.Contains(string(b), "reading request body") {
			t.Errorf("%s: %d %q, want %d with the gateway's line", tc.name, resp.StatusCode, b, tc.want)
		}
	}
}
