package caddymodule_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// This file: clients that misbehave on purpose, against a real Caddy
// running examples/Caddyfile (its distributor pointed at stand-ins) in a
// process of its own. Each gets a documented status or a closed
// connection; meanwhile a well-behaved client pushes and sees no failure,
// and afterwards Caddy's goroutines and file descriptors are back where
// they started.

// serverLimits are the timeouts and header limit of the example's server.
type serverLimits struct {
	ReadHeader time.Duration `json:"read_header_timeout"`
	ReadBody   time.Duration `json:"read_timeout"`
	Idle       time.Duration `json:"idle_timeout"`
	MaxHeader  int           `json:"max_header_bytes"`
}

// startExample runs examples/Caddyfile with its distributor replaced by
// the cluster, in a Caddy process of its own, and returns the server
// limits it configures.
func startExample(t *testing.T, cl *cluster) (*testcaddy.Caddy, serverLimits) {
	t.Helper()
	raw, err := os.ReadFile("../examples/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	caddyfile := strings.Replace(string(raw), "dns:///localhost:9095", cl.Target(), 1)
	if caddyfile == string(raw) {
		t.Fatal("examples/Caddyfile has no distributor dns:///localhost:9095 to replace")
	}
	c := testcaddy.StartCaddyfileProcess(t, caddyfile)
	adapted, err := c.Adapt(caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]serverLimits `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatal(err)
	}
	lim := cfg.Apps.HTTP.Servers["srv0"]
	if lim.ReadHeader <= 0 || lim.ReadBody <= 0 || lim.Idle <= 0 || lim.MaxHeader <= 0 {
		t.Fatalf("examples/Caddyfile sets no server timeouts and header limit: %+v", lim)
	}
	return c, lim
}

// waitBaseline polls until Caddy's goroutines and fds are back within
// tolerance of their baselines.
func waitBaseline(t *testing.T, c *testcaddy.Caddy, goroutines, fds, gTol, fdTol int) {
	t.Helper()
	var g, f int
	standin.WaitFor(t, 30*time.Second, "Caddy's goroutines and fds back to their baselines", func() bool {
		g, f = count(t, c.Goroutines), count(t, c.FDs)
		return g <= goroutines+gTol && f <= fds+fdTol
	})
	t.Logf("back to baseline: %d goroutines (baseline %d, +%d allowed), %d fds (baseline %d, +%d allowed)",
		g, goroutines, gTol, f, fds, fdTol)
}

func count(t *testing.T, of func() (int, error)) int {
	t.Helper()
	n, err := of()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// raiseFDLimit makes room for n more descriptors.
func raiseFDLimit(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		t.Fatalf("RLIMIT_NOFILE hard limit %d < %d needed", lim.Max, n)
	}
	old := lim
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// wellBehaved pushes over one keep-alive connection until stopped and
// returns how many pushes succeeded; every failure is a test error.
func wellBehaved(t *testing.T, c *testcaddy.Caddy) (stop func() int64) {
	client := oneConnClient(t, c)
	body := standin.RemoteWriteBody(100, 1)
	var ok, tries atomic.Int64
	stopLoad := runLoad(t, 1, func(int) {
		i := tries.Add(1)
		resp, b, err := push(client, body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("well-behaved push %d failed: %v %v %q", i, resp, err, b)
			return
		}
		ok.Add(1)
	})
	return func() int64 {
		stopLoad()
		client.CloseIdleConnections()
		return ok.Load()
	}
}

// rawConn is a client that writes whatever it likes to the gateway.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, c *testcaddy.Caddy) *rawConn {
	t.Helper()
	conn, err := net.Dial("unix", c.HTTPSock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawConn{Conn: conn, r: bufio.NewReader(conn)}
}

// response reads one response (nil at a closed connection without one).
func (rc *rawConn) response(t *testing.T) *http.Response {
	t.Helper()
	_ = rc.SetReadDeadline(time.Now().Add(2 * time.Minute))
	resp, err := http.ReadResponse(rc.r, nil)
	if err != nil {
		return nil
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp
}

// closed waits for the server to close the connection, discarding
// what it sends, and says how long that took.
func (rc *rawConn) closed(t *testing.T, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	_ = rc.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, rc.r)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after %v", limit)
	}
	return time.Since(start)
}

func pushHead(contentLength int, extra string) string {
	return fmt.Sprintf("POST /api/v1/push HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-protobuf\r\n"+
		"Content-Encoding: snappy\r\nX-Scope-OrgID: tenant-1\r\nContent-Length: %d\r\n%s\r\n", contentLength, extra)
}

// trickle writes one byte of s every interval until it is written or the
// connection fails.
func trickle(conn net.Conn, s string, interval time.Duration) {
	for i := 0; i < len(s); i++ {
		if _, err := conn.Write([]byte{s[i]}); err != nil {
			return
		}
		time.Sleep(interval) // pacing the attack, not synchronisation
	}
}

// TestHostileClients runs every attack of RELIABILITY.md's table at once
// against examples/Caddyfile, with the server limits the example sets.
func TestHostileClients(t *testing.T) {
	const abandoned = 5000
	t.Parallel()                      // Caddy runs in a process of its own
	raiseFDLimit(t, 2*abandoned+4096) // before Caddy starts: it inherits the limit
	began := time.Now()
	cl := startCluster(t, 3)
	c, lim := startExample(t, cl)
	t.Logf("server limits from examples/Caddyfile: %+v", lim)
	body := standin.RemoteWriteBody(100, 1)
	standin.WaitFor(t, 20*time.Second, "3 gRPC connections", func() bool {
		_, _, _ = push(c.Client, body)
		return cl.conns.Load() == 3
	})
	c.Client.CloseIdleConnections()
	goroutines, fds := count(t, c.Goroutines), count(t, c.FDs)
	stop := wellBehaved(t, c)
	t.Logf("set up after %v", time.Since(began).Round(time.Millisecond))

	// All at once: t.Run from several goroutines runs the subtests
	// concurrently without t.Parallel's limit of GOMAXPROCS at a time.
	var attacks sync.WaitGroup
	attack := func(name string, fn func(t *testing.T)) {
		attacks.Go(func() {
			t.Run(name, fn)
		})
	}
	{
		attack("slowloris headers", func(t *testing.T) {
			start := time.Now() // before the server's timer can start
			rc := dialRaw(t, c)
			go trickle(rc, "POST /api/v1/push HTTP/1.1\r\nHost: gateway\r\nX-Scope-OrgID: tenant-1\r\nX-Padding: "+strings.Repeat("a", 1000), 200*time.Millisecond)
			rc.closed(t, lim.ReadHeader+time.Minute)
			if took := time.Since(start); took < lim.ReadHeader {
				t.Errorf("closed after %v, before read_header %v", took, lim.ReadHeader)
			}
		})
		attack("slowloris body", func(t *testing.T) {
			start := time.Now() // before the server's timer can start
			rc := dialRaw(t, c)
			go func() {
				if _, err := io.WriteString(rc, pushHead(len(body), "")); err == nil {
					trickle(rc, string(body), 200*time.Millisecond)
				}
			}()
			resp := rc.response(t)
			if resp == nil || resp.StatusCode != http.StatusRequestTimeout {
				t.Fatalf("response %v, want 408", resp)
			}
			if took := time.Since(start); took < lim.ReadBody {
				t.Errorf("answered after %v, before read_body %v", took, lim.ReadBody)
			}
			rc.closed(t, time.Minute)
		})
		attack("lying Content-Length, longer than the body", func(t *testing.T) {
			rc := dialRaw(t, c)
			_, _ = io.WriteString(rc, pushHead(len(body)+1000, "")+string(body))
			if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusRequestTimeout {
				t.Fatalf("response %v, want 408 at read_body", resp)
			}
		})
		attack("idle keep-alive connection", func(t *testing.T) {
			rc := dialRaw(t, c)
			start := time.Now() // before the server's idle timer can start
			_, _ = io.WriteString(rc, "GET /ready HTTP/1.1\r\nHost: gateway\r\n\r\n")
			if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /ready: %v", resp)
			}
			rc.closed(t, lim.Idle+time.Minute)
			if took := time.Since(start); took < lim.Idle {
				t.Errorf("idle connection closed after %v, before idle %v", took, lim.Idle)
			}
		})
		attack("5000 connections opened and abandoned", func(t *testing.T) {
			conns := make([]net.Conn, 0, abandoned)
			for i := 0; i < abandoned; i++ {
				conn, err := net.Dial("unix", c.HTTPSock)
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				switch i % 3 {
				case 0: // says nothing
				case 1: // half a request line
					_, _ = io.WriteString(conn, "POST /api/v1/pu")
				case 2: // headers, no end
					_, _ = io.WriteString(conn, "POST /api/v1/push HTTP/1.1\r\nHost: gateway\r\n")
				}
				conns = append(conns, conn)
			}
			// Half are abandoned by closing them, half by never coming
			// back: the server must close those at read_header.
			var wg sync.WaitGroup
			var open atomic.Int64
			for i, conn := range conns {
				if i%2 == 0 {
					conn.Close()
					continue
				}
				wg.Go(func() {
					defer conn.Close()
					_ = conn.SetReadDeadline(time.Now().Add(lim.ReadHeader + 2*time.Minute))
					if _, err := io.Copy(io.Discard, conn); err != nil {
						open.Add(1)
					}
				})
			}
			wg.Wait()
			if n := open.Load(); n > 0 {
				t.Errorf("%d abandoned connections not closed by the server", n)
			}
		})
		attack("1 MiB of headers", func(t *testing.T) {
			rc := dialRaw(t, c)
			go func() { _, _ = io.WriteString(rc, pushHead(0, "X-Big: "+strings.Repeat("b", 1<<20)+"\r\n")) }()
			if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("response %v, want 431", resp)
			}
		})
		attack("10000 headers", func(t *testing.T) {
			var many strings.Builder
			for i := 0; i < 10000; i++ {
				fmt.Fprintf(&many, "X-H-%05d: v\r\n", i)
			}
			rc := dialRaw(t, c)
			go func() { _, _ = io.WriteString(rc, pushHead(len(body), many.String())+string(body)) }()
			if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("10000 distinct headers: %v, want 431", resp)
			}
			// 10000 short values of one header fit the limit: tunnelled.
			rc = dialRaw(t, c)
			go func() {
				_, _ = io.WriteString(rc, pushHead(len(body), strings.Repeat("A: 1\r\n", 10000))+string(body))
			}()
			if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("10000 values of one header: %v, want 200", resp)
			}
		})
		attack("CR, LF, NUL and non-ASCII in X-Scope-OrgID", func(t *testing.T) {
			for _, bad := range []string{"tenant\r-1", "tenant\x00-1", "ten\nant-1", "tenant-\xff", "tenant-\x01"} {
				rc := dialRaw(t, c)
				req := strings.Replace(pushHead(len(body), ""), "X-Scope-OrgID: tenant-1", "X-Scope-OrgID: "+bad, 1)
				go func() { _, _ = io.WriteString(rc, req+string(body)) }()
				if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusBadRequest {
					t.Errorf("X-Scope-OrgID %q: %v, want 400", bad, resp)
				}
			}
		})
		attack("body that stops midway", func(t *testing.T) {
			rc := dialRaw(t, c)
			_, _ = io.WriteString(rc, pushHead(len(body), "")+string(body[:len(body)/2]))
			_ = rc.Conn.(*net.UnixConn).CloseWrite()
			if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("response %v, want 400", resp)
			}
			// And one whose client vanishes: nothing to answer, nothing left.
			rc = dialRaw(t, c)
			_, _ = io.WriteString(rc, pushHead(len(body), "")+string(body[:len(body)/2]))
			rc.Close()
		})
		attack("lying Content-Length, shorter than the body", func(t *testing.T) {
			rc := dialRaw(t, c)
			// 10 bytes are the body; the rest is read as the next request.
			go func() { _, _ = io.WriteString(rc, pushHead(10, "")+string(body)) }()
			if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("first response %v, want 400 (a truncated body)", resp)
			}
			if resp := rc.response(t); resp != nil && resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("the body's rest as a request: %v, want 400 or a closed connection", resp)
			}
			rc.closed(t, time.Minute)
		})
		attack("invalid Content-Length", func(t *testing.T) {
			for _, cl := range []string{"Content-Length: -1", "Content-Length: abc", "Content-Length: 5\r\nContent-Length: 6"} {
				rc := dialRaw(t, c)
				req := strings.Replace(pushHead(len(body), ""), fmt.Sprintf("Content-Length: %d", len(body)), cl, 1)
				go func() { _, _ = io.WriteString(rc, req+string(body)) }()
				if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusBadRequest {
					t.Errorf("%q: %v, want 400", cl, resp)
				}
			}
		})
		attack("Expect: 100-continue", func(t *testing.T) {
			rc := dialRaw(t, c)
			_, _ = io.WriteString(rc, pushHead(len(body), "Expect: 100-continue\r\n"))
			if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusContinue {
				t.Fatalf("interim response %v, want 100", resp)
			}
			_, _ = rc.Write(body)
			if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("response %v, want 200", resp)
			}
			// Too large to take: 413 at once, without asking for the body
			// (the connection then closes at read_body).
			start := time.Now()
			rc = dialRaw(t, c)
			_, _ = io.WriteString(rc, pushHead(200<<20, "Expect: 100-continue\r\n"))
			if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("200 MiB announced: %v, want 413", resp)
			}
			t.Logf("413 and close after %v", time.Since(start))
		})
		attack("h2c: prior knowledge and upgrade", func(t *testing.T) {
			tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", c.HTTPSock)
			}}
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequest(http.MethodPost, "http://gateway/api/v1/push", bytes.NewReader(body))
			req.Header.Set("X-Scope-OrgID", "tenant-1")
			resp, err := (&http.Client{Transport: tr, Timeout: time.Minute}).Do(req)
			if err != nil {
				t.Fatalf("h2c prior knowledge: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
				t.Fatalf("h2c prior knowledge: %s over %s, want 200 over HTTP/2", resp.Status, resp.Proto)
			}
			// The h2c upgrade header is ignored: served over HTTP/1.1.
			rc := dialRaw(t, c)
			_, _ = io.WriteString(rc, pushHead(len(body), "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n")+string(body))
			if resp := rc.response(t); resp == nil || resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 {
				t.Fatalf("h2c upgrade request: %v, want 200 over HTTP/1.1", resp)
			}
		})
	}
	attacks.Wait()

	t.Logf("attacks done after %v", time.Since(began).Round(time.Millisecond))
	if ok := stop(); ok == 0 {
		t.Error("the well-behaved client pushed nothing")
	} else {
		t.Logf("well-behaved client: %d pushes, 0 failed", ok)
	}
	if resp, b, err := c.Get("/ready"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("gateway not ready after the attacks: %v %v %q", resp, err, b)
	}
	c.Client.CloseIdleConnections()
	waitBaseline(t, c, goroutines, fds, 10, 5)
	t.Logf("back to baseline after %v", time.Since(began).Round(time.Millisecond))
}
