package grpcpush

import (
	"bufio"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBodySlowerThanReadTimeout: a client that sends its body slower than
// the server's read timeout (Caddy's read_body) gets 408 Request Timeout,
// not 400, and no call is made.
func TestBodySlowerThanReadTimeout(t *testing.T) {
	cl := startCluster(t, 1)
	h := newHandler(t, cl, Options{})
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)

	conn := sendHead(t, srv.Listener.Addr().String(), 1000)
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d %q %v, want 408", resp.StatusCode, b, resp.Header)
	}
	if n := cl.Distributors[0].Requests(); n != 0 {
		t.Errorf("%d calls made for a body that never arrived", n)
	}
	if !strings.Contains(resp.Status, "408") {
		t.Errorf("status line %q", resp.Status)
	}
}

// TestBodyEndsEarly: a client that half-closes its connection in the middle
// of the body it announced gets 400. net/http has cancelled the request's
// context by then; an answer left unwritten would reach the client as an
// empty 200, and a remote-write client would drop data it believes was
// ingested.
func TestBodyEndsEarly(t *testing.T) {
	cl := startCluster(t, 1)
	srv := frontend(t, newHandler(t, cl, Options{}))
	conn := sendHead(t, srv.Listener.Addr().String(), 1000)
	resp := halfCloseAndRead(t, conn)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d %q, want 400", resp.StatusCode, b)
	}
}

// TestHalfCloseAfterBody: a client that half-closes its connection after
// the whole request, while the call is in flight, makes net/http cancel the
// call. It gets 503 (retry), not the empty 200 net/http sends for a handler
// that wrote nothing.
func TestHalfCloseAfterBody(t *testing.T) {
	cl := startCluster(t, 1)
	cl.Distributors[0].SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		<-r.Context().Done() // answers only once the call is cancelled
		return true
	})
	srv := frontend(t, newHandler(t, cl, Options{}))
	conn := sendHead(t, srv.Listener.Addr().String(), 3)
	standin.WaitFor(t, 20*time.Second, "the call to reach the distributor", func() bool { return cl.Distributors[0].Requests() == 1 })
	resp := halfCloseAndRead(t, conn)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d %q, want 503", resp.StatusCode, b)
	}
}

// halfCloseAndRead closes the client's sending side of conn and reads the
// gateway's answer (bounded by a generous deadline).
func halfCloseAndRead(t *testing.T, conn net.Conn) *http.Response {
	t.Helper()
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// sendHead connects to addr and sends a push announcing contentLength bytes
// of which only "abc" follows; the connection closes when the test ends.
func sendHead(t *testing.T, addr string, contentLength int) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	head := "POST /api/v1/push HTTP/1.1\r\nHost: gw\r\nX-Scope-OrgID: tenant-1\r\nContent-Length: " + strconv.Itoa(contentLength) + "\r\n\r\nabc"
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	return conn
}
