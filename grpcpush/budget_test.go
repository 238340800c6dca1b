package grpcpush

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// dropsMidSend is an HTTP/2 endpoint that takes a call's first window of
// data (64 KiB), never opens the window further, and then closes the
// connection: the rest of a larger push is still queued in the client's
// stream when its transport closes.
func dropsMidSend(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() {
		lis.Close()
		conns.Wait()
	})
	conns.Go(func() {
		for range 20 { // the client reconnects; bounded all the same
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { takeOneWindowAndDrop(conn) })
		}
	})
	return lis.Addr().String()
}

func takeOneWindowAndDrop(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, make([]byte, len(http2.ClientPreface))); err != nil {
		return
	}
	fr := http2.NewFramer(conn, conn)
	if fr.WriteSettings() != nil {
		return
	}
	for got := 0; ; {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() && fr.WriteSettingsAck() != nil {
				return
			}
		case *http2.PingFrame:
			if !f.IsAck() && fr.WritePing(true, f.Data) != nil {
				return
			}
		case *http2.DataFrame:
			if got += len(f.Data()); got >= 65535 {
				return // the window is used up: the rest waits in the client
			}
		}
	}
}

// TestBudgetKeepsNoBodyOfADroppedConnection: when a connection closes
// while a push is still queued in its stream, grpc-go never gives that
// buffer back (its loopy writer frees only its control buffer's frames).
// The Budget must not count it for good: max_buffered_bytes would shrink
// with every endpoint that dies mid-send, until every push got 503.
func TestBudgetKeepsNoBodyOfADroppedConnection(t *testing.T) {
	h, err := New(Options{Target: "dns:///" + dropsMidSend(t), Retries: Ptr(0), Timeout: 5 * time.Second,
		MaxRequestBody: 2 << 20, MaxBufferedBytes: MinBufferedBytes(2 << 20)})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	body := bytes.Repeat([]byte("x"), 1<<20)
	for i := range 4 { // 4 × a 2 MiB buffer would pass the 6 MiB bound if they stayed counted
		if w := serve(h, pushRequest(body)); w.Code == http.StatusOK {
			t.Fatalf("push %d: %d from an endpoint that drops the connection", i, w.Code)
		}
		standin.WaitFor(t, 20*time.Second, "the budget to hold nothing", func() bool {
			runtime.GC() // the lost buffer is uncounted once it is garbage
			return h.own.budget.Used() == 0
		})
	}
}

// TestLargestBodyFitsTheSmallestBudget: MinBufferedBytes is enough for a
// body of MaxRequestBody, whether its length is announced or not, and a
// smaller max_buffered_bytes is refused: a push that can never be held
// would be answered 503, and retried by its client, for ever.
func TestLargestBodyFitsTheSmallestBudget(t *testing.T) {
	body := standin.RemoteWriteBody(20000, 1) // a valid push; its buffer grows a few times
	limit := int64(len(body))
	cl := startCluster(t, 1)
	if _, err := New(Options{Target: cl.Target(), MaxRequestBody: limit, MaxBufferedBytes: MinBufferedBytes(limit) - 1}); err == nil {
		t.Error("a max_buffered_bytes below MinBufferedBytes(max_request_body) was accepted")
	}
	h := newHandler(t, cl, Options{MaxRequestBody: limit, MaxBufferedBytes: MinBufferedBytes(limit)})
	waitReady(t, h, 1)
	for _, announced := range []bool{true, false} {
		r := pushRequest(body)
		if !announced {
			r.ContentLength = -1
			r.Body = io.NopCloser(bytes.NewReader(body)) // a reader of unknown length
		}
		if w := serve(h, r); w.Code != http.StatusOK {
			t.Errorf("a body of max_request_body, Content-Length announced %v: %d %s", announced, w.Code, w.Body)
		}
	}
}
