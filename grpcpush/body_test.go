package grpcpush

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/net/http2"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// stalledRead starts readBody on a body announced as contentLength of
// which nothing arrives, and returns a func that ends the upload with err
// and returns what readBody returned.
func stalledRead(t *testing.T, contentLength int64, budget *Budget) (end func(err error) error) {
	t.Helper()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		buf, _, err := readBody(pr, contentLength, DefaultMaxRequestBody, budget)
		if buf != nil {
			budget.Put(buf)
		}
		done <- err
	}()
	return func(err error) error {
		_ = pw.CloseWithError(err)
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("readBody did not return after the upload ended")
			return nil
		}
	}
}

// TestBufferBytesIsWhatABodyHolds: BufferBytes is what a Budget counts for
// a body read whole with its length announced; without, at least the first
// chunk.
func TestBufferBytesIsWhatABodyHolds(t *testing.T) {
	for n, want := range map[int]int{1: 4 << 10, 4<<10 - headroom: 4 << 10, 4<<10 - headroom + 1: 8 << 10, 42569: 64 << 10, 100 << 10: 128 << 10} {
		if got := BufferBytes(n); got != want {
			t.Errorf("BufferBytes(%d) = %d, want %d", n, got, want)
		}
		for _, announced := range []int64{int64(n), -1} {
			budget := NewBudget(1<<30, nil, "")
			buf, _, err := readBody(bytes.NewReader(make([]byte, n)), announced, DefaultMaxRequestBody, budget)
			if err != nil {
				t.Fatal(err)
			}
			want := BufferBytes(n)
			if announced < 0 {
				want = max(want, headroom+firstChunk)
			}
			if used := budget.Used(); used != int64(want) {
				t.Errorf("%d bytes (Content-Length %d) hold %d, want %d", n, announced, used, want)
			}
			budget.Put(buf)
		}
	}
}

// TestContentLengthReservesNoMoreThanTheFirstChunk: a body announced as
// 100 MiB of which nothing arrives holds one 64 KiB buffer, not 100 MiB.
func TestContentLengthReservesNoMoreThanTheFirstChunk(t *testing.T) {
	budget := NewBudget(1<<30, nil, "")
	end := stalledRead(t, 100<<20, budget)
	standin.WaitFor(t, 10*time.Second, "the first buffer taken", func() bool { return budget.Used() > 0 })
	if used := budget.Used(); used != headroom+firstChunk {
		t.Errorf("a stalled 100 MiB upload holds %d bytes, want %d", used, headroom+firstChunk)
	}
	if err := end(io.ErrUnexpectedEOF); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("readBody = %v, want the upload's error", err)
	}
	if used := budget.Used(); used != 0 {
		t.Errorf("%d bytes still held after the failed upload", used)
	}
}

// TestBudgetFullStopsBeforeReading: once the budget holds all it may, the
// next body is refused before a byte of it is read, and the bytes held
// come back when the uploads end.
func TestBudgetFullStopsBeforeReading(t *testing.T) {
	budget := NewBudget(2*(headroom+firstChunk), nil, "")
	end1 := stalledRead(t, 1<<20, budget)
	end2 := stalledRead(t, 1<<20, budget)
	standin.WaitFor(t, 10*time.Second, "two first buffers taken", func() bool { return budget.Used() == budget.Limit() })
	body := &countingReader{r: bytes.NewReader(make([]byte, 100))}
	if _, _, err := readBody(body, 100, DefaultMaxRequestBody, budget); !errors.Is(err, ErrBudgetFull) {
		t.Fatalf("third body: %v, want ErrBudgetFull", err)
	}
	if body.n != 0 {
		t.Errorf("%d bytes of the refused body were read", body.n)
	}
	end1(io.ErrUnexpectedEOF)
	end2(io.ErrUnexpectedEOF)
	if used := budget.Used(); used != 0 {
		t.Errorf("%d bytes still held", used)
	}
}

// TestBodyGrowsAsItArrives: bodies of every size, known and unknown
// length, arriving a few bytes at a time, are read whole; the budget
// holds exactly the final buffer.
func TestBodyGrowsAsItArrives(t *testing.T) {
	for _, size := range []int{0, 1, firstChunk, firstChunk + 1, 3 << 20} {
		body := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
		for _, contentLength := range []int64{int64(size), -1} {
			budget := NewBudget(1<<30, nil, "")
			buf, n, err := readBody(iotest.HalfReader(bytes.NewReader(body)), contentLength, 4<<20, budget)
			if err != nil {
				t.Fatalf("%d bytes, Content-Length %d: %v", size, contentLength, err)
			}
			if n != size || !bytes.Equal((*buf)[headroom:], body) {
				t.Errorf("%d bytes, Content-Length %d: read %d bytes, not the body", size, contentLength, n)
			}
			if used := budget.Used(); used != int64(cap(*buf)) {
				t.Errorf("%d bytes: budget holds %d, the buffer is %d", size, used, cap(*buf))
			}
			budget.Put(buf)
		}
	}
}

// TestBodyLimits: over the limit (announced or not) is ErrBodyTooLarge,
// a body shorter than announced is io.ErrUnexpectedEOF; nothing stays held.
func TestBodyLimits(t *testing.T) {
	budget := NewBudget(1<<30, nil, "")
	for _, tc := range []struct {
		size          int
		contentLength int64
		want          error
	}{
		{1001, 1001, ErrBodyTooLarge},
		{1001, -1, ErrBodyTooLarge},
		{500, 1000, io.ErrUnexpectedEOF},
	} {
		_, _, err := readBody(bytes.NewReader(make([]byte, tc.size)), tc.contentLength, 1000, budget)
		if !errors.Is(err, tc.want) {
			t.Errorf("%d bytes, Content-Length %d: %v, want %v", tc.size, tc.contentLength, err, tc.want)
		}
	}
	if used := budget.Used(); used != 0 {
		t.Errorf("%d bytes still held", used)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

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
