package grpcpush

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// pipeListener hands net/http the server ends of net.Pipe connections: no
// kernel buffer absorbs what the server writes, as with a client whose TCP
// window stays closed.
type pipeListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, errors.New("closed")
	}
}
func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// TestSlowReaderHoldsNoBody: once the call is done, the request's body
// leaves max_buffered_bytes, also while a client that does not read keeps
// its answer from being written.
func TestSlowReaderHoldsNoBody(t *testing.T) {
	var done atomic.Int64
	cl := startCluster(t, 1)
	cl.Distributors[0].SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		_, _ = w.Write(make([]byte, 4<<20))
		return true
	})
	h := newHandler(t, cl, Options{Retries: Ptr(0), OnDone: func(*http.Request, string, int) { done.Add(1) }})
	waitReady(t, h, 1)
	l := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	c, s := net.Pipe()
	l.conns <- s
	t.Cleanup(func() { c.Close() })
	go fmt.Fprintf(c, "GET /prometheus/api/v1/query_range?query=up HTTP/1.1\r\nHost: gw\r\nX-Scope-OrgID: tenant-1\r\n\r\n")
	go func() { _, _ = c.Read(make([]byte, 64)) }() // the start of the answer, then nothing more
	standin.WaitFor(t, 20*time.Second, "the call made", func() bool { return cl.Distributors[0].Requests() == 1 })
	standin.WaitFor(t, 20*time.Second, "the body out of the budget", func() bool { return h.own.budget.Used() == 0 })
	if n := done.Load(); n != 0 {
		t.Fatalf("the request ended (%d): the answer was not held by the slow reader", n)
	}
}
