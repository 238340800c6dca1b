package caddymodule_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metrics-gateway/metrics_gateway/caddymodule"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// This file: what a client on the internet can do to the gateway's memory
// and to the distributors' health, and the Retry-After it is told.

// h1h2cConfig is the test config of handlers with a server that speaks
// HTTP/1.1 and HTTP/2 over cleartext (h2c).
func h1h2cConfig(c *testcaddy.Caddy, handlers string) string {
	return strings.Replace(string(c.Config(handlers)), `"automatic_https": {"disable": true},`,
		`"automatic_https": {"disable": true}, "protocols": ["h1", "h2c"],`, 1)
}

// h2cClient speaks HTTP/2 without TLS to the gateway's socket; each
// connection carries up to the server's 250 streams, more open new ones.
func h2cClient(t *testing.T, c *testcaddy.Caddy) *http.Client {
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", c.HTTPSock)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}
}

// rssBytes is the resident memory of this process, in which Caddy runs.
func rssBytes(t *testing.T) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^VmRSS:\s+(\d+) kB$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no VmRSS in /proc/self/status")
	}
	kb, _ := strconv.ParseFloat(string(m[1]), 64)
	return kb * 1024
}

// distributorBuffered returns the body bytes the distributor backend holds
// and its bound, from the admin view.
func distributorBuffered(t *testing.T, c *testcaddy.Caddy) (held, limit int64) {
	t.Helper()
	for _, bs := range backendStatuses(t, c) {
		if bs.Component == caddymodule.ComponentDistributor {
			return bs.BufferedBytes, bs.MaxBufferedBytes
		}
	}
	t.Fatal("no distributor in the admin view")
	return 0, 0
}

// stalledH1 announces a push of contentLength bytes over HTTP/1.1, sends
// the first sent bytes of its body and then nothing, and returns the
// status the gateway answers (0: none) and when.
func stalledH1(t *testing.T, c *testcaddy.Caddy, contentLength, sent int) (status chan int) {
	rc := dialRaw(t, c)
	status = make(chan int, 1)
	go func() {
		if _, err := io.WriteString(rc, pushHead(contentLength, "")); err == nil && sent > 0 {
			_, _ = rc.Write(make([]byte, sent))
		}
	}()
	go func() {
		_ = rc.SetReadDeadline(time.Now().Add(2 * time.Minute))
		status <- statusOf(http.ReadResponse(bufio.NewReader(rc), nil))
	}()
	return status
}

// statusOf is the status of an answer, 0 for none.
func statusOf(resp *http.Response, err error) int {
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// stalledH2C announces a push of contentLength bytes on an HTTP/2 stream
// and sends none of it.
func stalledH2C(client *http.Client, contentLength int64) (status chan int) {
	status = make(chan int, 1)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, "http://gateway/api/v1/push", pr)
	req.ContentLength = contentLength
	standin.SetPushHeaders(req.Header, "tenant-1")
	go func() {
		defer pw.Close()
		status <- statusOf(client.Do(req))
	}()
	return status
}

// TestStalledUploadsBoundMemory: 300 requests over HTTP/1.1 and 300 over
// h2c each announce a 100 MiB body and send nothing. A Content-Length
// reserves no more than the first 64 KiB buffer, so the gateway's RSS and
// Go heap stay far below 512 MiB (the body of one such request, had it been
// reserved, would be 100 MiB); pushes meanwhile succeed; the stalled
// requests end with 408 at their timeout.
func TestStalledUploadsBoundMemory(t *testing.T) {
	const stalled, timeout = 300, 4 * time.Second
	raiseFDLimit(t, 4*stalled+4096)
	cl := startCluster(t, 2)
	c := testcaddy.StartJSON(t, func(tc *testcaddy.Caddy) string {
		return h1h2cConfig(tc, cl.handlerJSON(fmt.Sprintf(`"timeout": %q`, timeout)))
	})
	body := standin.RemoteWriteBody(100, 1)
	if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %v %v %q", err, resp, b)
	}
	h2c := h2cClient(t, c)
	start := time.Now()
	var statuses []chan int
	for i := 0; i < stalled; i++ {
		statuses = append(statuses, stalledH1(t, c, 100<<20, 0), stalledH2C(h2c, 100<<20))
	}
	const firstBuffer = 64 << 10
	standin.WaitFor(t, 20*time.Second, "every stalled request holding its first buffer", func() bool {
		held, _ := distributorBuffered(t, c)
		return held == 2*stalled*firstBuffer
	})
	rss, heap := rssBytes(t), metricValue(t, c, "go_memstats_heap_alloc_bytes")
	t.Logf("%d stalled requests announcing 100 MiB each: RSS %.1f MiB, Go heap %.1f MiB", 2*stalled, rss/(1<<20), heap/(1<<20))
	if rss >= 512<<20 || heap >= 512<<20 {
		t.Errorf("RSS %.1f MiB, heap %.1f MiB: want both below 512 MiB", rss/(1<<20), heap/(1<<20))
	}
	for i := 0; i < 20; i++ {
		if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
			t.Errorf("push among the stalled requests: %v %v %q", err, resp, b)
		}
	}
	counts := map[int]int{}
	for _, s := range statuses {
		counts[<-s]++
	}
	took := time.Since(start)
	t.Logf("stalled requests ended after %v: %v", took.Round(time.Millisecond), counts)
	if counts[http.StatusRequestTimeout] != 2*stalled {
		t.Errorf("stalled requests answered %v, want %d × 408", counts, 2*stalled)
	}
	if took < timeout {
		t.Errorf("stalled requests ended after %v, before their timeout %v", took, timeout)
	}
	standin.WaitFor(t, 20*time.Second, "every buffer given back", func() bool {
		held, _ := distributorBuffered(t, c)
		return held == 0
	})
}

// TestMaxBufferedBytes: with max_buffered_bytes 64MiB, three uploads of
// 16 MiB that stall after 15 MiB hold 48 MiB; a fourth like them would take
// the backend over the bound as its buffer grows, and is answered 503 with
// Retry-After before the rest of its body is read, reaching no distributor.
// Small pushes still pass; the stalled ones end with 408.
func TestMaxBufferedBytes(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 2)
	c := testcaddy.Start(t, cl.handlerJSON(`"timeout": "5s", "max_request_body": 16777216, "max_buffered_bytes": 67108864`))
	body := standin.RemoteWriteBody(100, 1)
	if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %v %v %q", err, resp, b)
	}
	callsBefore := cl.Servers[0].Calls() + cl.Servers[1].Calls()
	const fullName, fullLabel = "metrics_gateway_grpc_buffer_full_total", `backend="distributor"`
	fullBefore := metricValue(t, c, fullName, fullLabel)
	const size, sent = 16 << 20, 15 << 20
	// One after the other: a buffer growing from 8 to 16 MiB holds both
	// for a moment, and three growing at once would pass 64 MiB.
	var stalled []chan int
	for i := 1; i <= 3; i++ {
		stalled = append(stalled, stalledH1(t, c, size, sent))
		standin.WaitFor(t, 20*time.Second, fmt.Sprintf("%d stalled uploads holding their buffers", i), func() bool {
			held, _ := distributorBuffered(t, c)
			return held == int64(i)*size // 15 MiB and the headroom fill a 16 MiB buffer
		})
	}
	_, limit := distributorBuffered(t, c)
	if limit != 64<<20 {
		t.Errorf("admin view: max_buffered_bytes %d", limit)
	}
	fourth := dialRaw(t, c)
	go func() {
		_, _ = io.WriteString(fourth, pushHead(size, ""))
		_, _ = fourth.Write(make([]byte, sent))
	}()
	resp := fourth.response(t)
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || !firstRetryAfter(resp.Header.Get("Retry-After")) {
		t.Fatalf("fourth upload: %v, want 503 with Retry-After", resp)
	}
	b, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(b), "max_buffered_bytes") {
		t.Errorf("503 body %q does not name max_buffered_bytes", b)
	}
	if n := metricValue(t, c, fullName, fullLabel) - fullBefore; n != 1 {
		t.Errorf("metrics_gateway_grpc_buffer_full_total counted %v refused uploads, want 1", n)
	}
	for i := 0; i < 10; i++ {
		if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
			t.Errorf("small push while the bound is nearly reached: %v %v %q", err, resp, b)
		}
	}
	for _, s := range stalled {
		if code := <-s; code != http.StatusRequestTimeout {
			t.Errorf("stalled upload: %d, want 408", code)
		}
	}
	if calls := cl.Servers[0].Calls() + cl.Servers[1].Calls() - callsBefore; calls != 10 {
		t.Errorf("%d calls reached the distributors, want the 10 small pushes only", calls)
	}
}

// TestLateUploadKeepsEndpointHealthy: a push whose body arrives `left`
// before the timeout leaves its call `left` (well under the fair share,
// timeout/2); it times out (504), and with max_fails 1 that must not take a
// healthy distributor out: the upload, not the distributor, used the time.
func TestLateUploadKeepsEndpointHealthy(t *testing.T) {
	// Margins for a busy machine, both ways: the body may arrive up to
	// `left` late and still be read (not a 408), and the gateway may start
	// the request's clock up to answer-left after the client wrote its head
	// and the distributor still answers after the deadline (not a 200).
	const timeout, left, answer = 2 * time.Second, 200 * time.Millisecond, 500 * time.Millisecond
	cl := startCluster(t, 3)
	c := testcaddy.Start(t, cl.handlerJSON(fmt.Sprintf(`"timeout": %q, "retries": 0, "fail_duration": "1m", "max_fails": 1`, timeout)))
	for _, d := range cl.Distributors {
		d.SetBehavior(standin.AnswerAfter(answer)) // a healthy distributor's push
	}
	body := standin.RemoteWriteBody(100, 1)
	for i := 0; i < 3; i++ {
		if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
			t.Fatalf("push: %v %v %q", err, resp, b)
		}
	}
	for i := 0; i < 3; i++ {
		rc := dialRaw(t, c)
		if _, err := io.WriteString(rc, pushHead(len(body), "")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(timeout - left) // the slow upload itself
		if _, err := rc.Write(body); err != nil {
			t.Fatal(err)
		}
		if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("late upload %d: %v, want 504", i, resp)
		}
	}
	for addr, e := range endpoints(t, c) {
		if !e.Healthy {
			t.Errorf("%s taken out by a client's late uploads: %q", addr, e.LastFailure)
		}
	}
}

// TestRetryAfterLikeMimir: the gateway's own 503s carry Retry-After as
// Mimir's distributor computes it, growing with Retry-Attempt, with
// jitter; retry_after sets the bounds or turns it off; a component's own
// 429 keeps its Retry-After.
func TestRetryAfterLikeMimir(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	unavailable := func(context.Context) error { return status.Error(codes.Unavailable, "distributor is stopping") }
	cl.raw.Store(&unavailable)
	// pushAttempt sends a push as the attempt-th try of a remote-write
	// client.
	pushAttempt := func(c *testcaddy.Caddy, attempt int) (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodPost, "http://gateway/api/v1/push", strings.NewReader("x"))
		standin.SetPushHeaders(req.Header, "tenant-1")
		req.Header.Set("Retry-Attempt", strconv.Itoa(attempt))
		resp, _, err := c.Do(req)
		return resp, err
	}
	retryAfters := func(c *testcaddy.Caddy, attempt int) map[int]int {
		seen := map[int]int{}
		for i := 0; i < 40; i++ {
			resp, err := pushAttempt(c, attempt)
			if err != nil || resp.StatusCode != 503 {
				t.Fatalf("attempt %d: %v %v, want 503", attempt, err, resp)
			}
			n, err := strconv.Atoi(resp.Header.Get("Retry-After"))
			if err != nil {
				t.Fatalf("attempt %d: Retry-After %q", attempt, resp.Header.Get("Retry-After"))
			}
			seen[n]++
		}
		return seen
	}
	inBounds := func(seen map[int]int, lo, hi int) bool {
		for n := range seen {
			if n < lo || n > hi {
				return false
			}
		}
		return len(seen) > 1
	}

	c := testcaddy.Start(t, cl.handlerJSON(`"retries": 0`))
	// min·2^(n-1) capped at max, ±50 %, within [6, 96].
	for attempt, b := range map[int][2]int{1: {6, 9}, 2: {6, 18}, 3: {12, 36}, 4: {24, 72}, 5: {48, 96}} {
		if seen := retryAfters(c, attempt); !inBounds(seen, b[0], b[1]) {
			t.Errorf("Retry-Attempt %d: Retry-After values %v, want several in %d..%d", attempt, seen, b[0], b[1])
		}
	}

	with := func(retryAfter string) string {
		return strings.Replace(cl.handlerJSON(`"retries": 0`), `"handler": "metrics_gateway",`,
			`"handler": "metrics_gateway", "retry_after": `+retryAfter+`,`, 1)
	}
	if err := c.Reload(with(`{"min": "2s", "max": "10s"}`)); err != nil {
		t.Fatal(err)
	}
	// min(10, 2·2^3) = 10, ±5, within [2, 10].
	if seen := retryAfters(c, 4); !inBounds(seen, 5, 10) {
		t.Errorf("retry_after 2s 10s, Retry-Attempt 4: %v, want several in 5..10", seen)
	}
	if err := c.Reload(with(`{"off": true}`)); err != nil {
		t.Fatal(err)
	}
	resp, err := pushAttempt(c, 1)
	if err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "" {
		t.Errorf("retry_after off: %v %v, want 503 without Retry-After", err, resp)
	}

	cl.raw.Store(nil)
	cl.Distributors[0].SetBehavior(func(w http.ResponseWriter, _ *http.Request) bool {
		w.Header().Set("Retry-After", "7")
		http.Error(w, "ingestion rate limit", http.StatusTooManyRequests)
		return true
	})
	if err := c.Reload(cl.handlerJSON(`"retries": 0`)); err != nil {
		t.Fatal(err)
	}
	resp, err = pushAttempt(c, 5)
	if err != nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "7" {
		t.Errorf("Mimir's own 429: %v %v, want 429 with its Retry-After 7", err, resp)
	}
}

// TestRequestBodyMaxSizeIs413: a body cut by `request_body { max_size }`
// before the gateway is 413, as reverse_proxy answers it, not 400. (A
// Content-Length over max_size is refused by request_body itself; a body
// without one is cut while the gateway reads it.)
func TestRequestBodyMaxSizeIs413(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	c := testcaddy.StartCaddyfile(t, fmt.Sprintf(`
http://gateway {
	request_body {
		max_size 1KB
	}
	metrics_gateway {
		proxy {
			default http://127.0.0.1:1
			distributor %s
		}
	}
}`, cl.Target()))
	body := standin.RemoteWriteBody(100, 1)
	req, _ := http.NewRequest(http.MethodPost, "http://gateway/api/v1/push", io.MultiReader(bytes.NewReader(body)))
	standin.SetPushHeaders(req.Header, "tenant-1")
	resp, b, err := c.Do(req)
	if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(b), "max_size") {
		t.Errorf("chunked: %v %v %q, want 413 naming max_size", err, resp, b)
	}
	if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("with Content-Length: %v %v %q, want 413", err, resp, b)
	}
	if n := cl.Servers[0].Calls(); n != 0 {
		t.Errorf("%d calls reached the distributor", n)
	}
}

// TestFailedReloadLeavesLogger: a reload that fails in Provision after the
// shared gRPC upstream was taken must not leave that upstream logging
// through the failed config's logger: its own lines (here an endpoint
// change) keep going where the loaded config says.
func TestFailedReloadLeavesLogger(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	c := testcaddy.StartJSON(t, func(tc *testcaddy.Caddy) string { return loggedConfig(tc, cl, "a.log", "") })
	standin.WaitFor(t, 20*time.Second, "the first endpoint line in a.log", func() bool { return logHas(c, "a.log", "endpoints changed") })
	// The ingester's CA file does not exist: adapting accepts it, Provision
	// fails after the distributor's pooled upstream was taken.
	bad := loggedConfig(c, cl, "b.log", `, "ingester": {"url": "dns:///127.0.0.1:9", "grpc": {"tls": {"ca": "/nonexistent/ca.pem"}}}`)
	if err := c.Load([]byte(bad)); err == nil {
		t.Fatal("the config with a missing CA file loaded")
	}
	cl.DNS.SetA(distributorName, standin.GroupIP(0), "127.0.0.99")
	standin.WaitFor(t, 20*time.Second, "the endpoint change in a.log", func() bool {
		return strings.Count(logContent(c, "a.log"), "endpoints changed") >= 2
	})
	if logHas(c, "b.log", "endpoints changed") {
		t.Error("the failed config's logger got the shared upstream's lines")
	}
}

// loggedConfig is a config whose gateway logs to file name in c's
// directory, with extra backends after the distributor.
func loggedConfig(c *testcaddy.Caddy, cl *cluster, name, extra string) string {
	cfg := strings.Replace(string(c.Config(fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {
		"default": {"url": "http://127.0.0.1:1"},
		"distributor": {"url": %q, "grpc": {"refresh": "100ms"}}%s}}]`, cl.Target(), extra))),
		`"logs": {`, fmt.Sprintf(`"logs": {"gw": {"writer": {"output": "file", "filename": %q}, "level": "INFO",
			"include": ["http.handlers.metrics_gateway"]},`, c.Dir+"/"+name), 1)
	return strings.Replace(cfg, `"default": {"level": "WARN", "exclude": ["http.log.access"]}`,
		`"default": {"level": "WARN", "exclude": ["http.log.access", "http.handlers.metrics_gateway"]}`, 1)
}

func logContent(c *testcaddy.Caddy, name string) string {
	b, _ := os.ReadFile(c.Dir + "/" + name)
	return string(b)
}

func logHas(c *testcaddy.Caddy, name, msg string) bool {
	return strings.Contains(logContent(c, name), msg)
}

// TestNonCanonicalPathsRefused: the route, and with access_policies its
// scope, is chosen on the path as sent; a path a backend would resolve to
// another one ("..", ".", "//") is refused with 400 and reaches no backend,
// so that a read token cannot reach a write route through
// /prometheus/api/v1/../../../api/v1/push. So is a raw "#" in the request
// target: dskit's httpgrpc cuts the target there, so a gRPC backend would
// serve /graphite/metrics (metrics:write) for /graphite/metrics#x, routed
// as /graphite (metrics:read). So is a target that is not a path (x:%zz).
// Both kinds of backend are tried.
func TestNonCanonicalPathsRefused(t *testing.T) {
	t.Parallel()
	def := startEchoBackend(t, "default")
	cl := startCluster(t, 1)
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}, "query_frontend": {"url": %q}}}]`, cl.Target(), def.URL()))
	for _, path := range []string{
		"/prometheus/api/v1/../../../api/v1/push",
		"/prometheus/api/v1/query/../admin/tsdb/delete_series",
		"/prometheus/../distributor/all_user_stats",
		"/prometheus/./api/v1/query",
		"//api/v1/push",
		"/prometheus/api/v1//query",
		"/graphite/../api/v1/push",
		"/api/v1/push#x",
		"/prometheus/api/v1/query?query=up#x",
		"/graphite/metrics#x",
		"/graphite/render#/../metrics",
		// Absolute form without a path: the default route's, and no
		// component can parse it (a 500 counted against the endpoint).
		"x:%zz",
		"http:1:b",
	} {
		conn := dialRaw(t, c)
		if _, err := fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: gateway\r\nX-Scope-OrgID: team-a\r\nContent-Length: 0\r\n\r\n", path); err != nil {
			t.Fatal(err)
		}
		if resp := conn.response(t); resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %v, want 400", path, resp)
		}
	}
	if n := def.served.Load(); n != 0 {
		t.Errorf("%d requests with non-canonical paths reached the HTTP backend", n)
	}
	if n := cl.Requests()[0]; n != 0 {
		t.Errorf("%d requests with non-canonical paths reached the gRPC backend", n)
	}
	if resp, _, err := c.Get("/prometheus/api/v1/query?query=up"); err != nil || resp.StatusCode != 200 {
		t.Errorf("a canonical path: %v %v", err, resp)
	}
}
