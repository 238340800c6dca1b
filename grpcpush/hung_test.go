package grpcpush

import (
	"bytes"
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

// This file: distributors that hang in every way a network can make them
// hang. Calls must end at the timeout with 504 (or 503 where the endpoint
// never took the request), be retried only where that is safe, and leave no
// goroutines behind.

// pushMany sends n pushes through a real HTTP client with `workers`
// keep-alive connections and returns how many got each status.
func pushMany(t *testing.T, url string, n, workers int, body []byte, each func(code int, took time.Duration)) map[int]int {
	t.Helper()
	tr := &http.Transport{MaxConnsPerHost: workers, MaxIdleConnsPerHost: workers, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	var mu sync.Mutex
	counts := map[int]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				start := time.Now()
				code, _, b, err := post(client, url, body)
				if err != nil {
					t.Errorf("push: %v", err)
					return
				}
				if each != nil {
					each(code, time.Since(start))
				}
				if code != http.StatusOK && code != http.StatusGatewayTimeout && code != http.StatusServiceUnavailable {
					t.Errorf("push: %d %q", code, b)
				}
				mu.Lock()
				counts[code]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return counts
}

// TestThousandCallsToAHungDistributor: dskit's httpgrpc server takes calls
// and its handler never answers, not even when the call is cancelled.
// 1,000 pushes, 50 at a time, each end at the 200ms timeout with 504, none
// is retried (the distributor may have ingested it: a deadline is not safe
// to retry), and once they are done the gateway holds no more goroutines
// than before.
func TestThousandCallsToAHungDistributor(t *testing.T) {
	const n, workers, timeout = 1000, 50, 200 * time.Millisecond
	cl := startCluster(t, 1)
	h := newHandler(t, cl, Options{Timeout: timeout, Metrics: NewMetrics()})
	srv := frontend(t, h)
	waitReady(t, h, 1)
	if code, _, b, err := post(oneConnClient(t), srv.URL, standin.RemoteWriteBody(10, 1)); err != nil || code != http.StatusOK {
		t.Fatalf("warm-up: %d %q %v", code, b, err)
	}
	baseline := standin.NumGoroutines("standin.HangUntil")

	release := make(chan struct{})
	var hung atomic.Int64
	cl.Distributors[0].SetBehavior(standin.HangUntil(release, &hung))
	t.Cleanup(func() { close(release) })
	counts := pushMany(t, srv.URL, n, workers, standin.RemoteWriteBody(10, 1), func(code int, took time.Duration) {
		if took < timeout {
			t.Errorf("answered %d after %v, before the %v timeout", code, took, timeout)
		}
	})
	if counts[http.StatusGatewayTimeout] != n {
		t.Fatalf("statuses %v, want %d × 504", counts, n)
	}
	// The first 100 calls hang in the server's handlers for good, holding
	// all of the connection's streams (Mimir's -server.grpc-max-concurrent-
	// streams); the other 900 wait for a stream and are never sent. Any
	// retry of a deadline would show up here as more calls.
	if got := hung.Load(); got != standin.MaxConcurrentStreams {
		t.Errorf("the distributor took %d calls for %d pushes, want %d (its stream limit)", got, n, standin.MaxConcurrentStreams)
	}
	// The stand-in still holds its 1,000 hung handlers; the gateway must
	// hold nothing for them.
	standin.WaitGoroutines(t, baseline, 10, "standin.HangUntil")
	if v := metricValue(t, h.metrics.inFlight); v != 0 {
		t.Errorf("in-flight gauge %v after all calls ended", v)
	}
}

// silentListener accepts TCP connections and never says a word: the TCP
// handshake completes, the HTTP/2 one never does.
type silentListener struct {
	net.Listener
	accepted atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
}

func listenSilent(t *testing.T, addr string) *silentListener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &silentListener{Listener: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.conns {
			c.Close()
		}
	})
	return s
}

// TestEndpointThatNeverSpeaksHTTP2: one endpoint accepts connections and
// never answers. Alone, it makes every push fail with a status a client
// retries (504 while the connection attempt lasts, 503 after it failed);
// next to a healthy endpoint, no push fails at all: the silent one never
// becomes READY, so no request is ever sent to it.
func TestEndpointThatNeverSpeaksHTTP2(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 2)
	cl.Servers[1].Stop()
	silent := listenSilent(t, cl.Addr(1)) // the second distributor's address

	t.Run("alone", func(t *testing.T) {
		h := newHandler(t, cl, Options{Target: "dns:///" + cl.Addr(1), Timeout: 200 * time.Millisecond})
		srv := frontend(t, h)
		counts := pushMany(t, srv.URL, 100, 10, standin.RemoteWriteBody(10, 1), nil)
		if counts[http.StatusGatewayTimeout]+counts[http.StatusServiceUnavailable] != 100 {
			t.Fatalf("statuses %v, want 100 × 503 or 504", counts)
		}
		if silent.accepted.Load() == 0 {
			t.Fatal("the gateway never connected to the silent endpoint")
		}
	})
	t.Run("next to a healthy one", func(t *testing.T) {
		before := silent.accepted.Load()
		cl.ListOnly(0, 1)
		h := newHandler(t, cl, Options{Timeout: 5 * time.Second})
		srv := frontend(t, h)
		standin.WaitFor(t, 20*time.Second, "a connection attempt to the silent endpoint", func() bool {
			return silent.accepted.Load() > before
		})
		served := cl.Distributors[0].Requests()
		counts := pushMany(t, srv.URL, 500, 10, standin.RemoteWriteBody(10, 1), nil)
		if counts[http.StatusOK] != 500 {
			t.Fatalf("statuses %v, want 500 × 200", counts)
		}
		if got := cl.Distributors[0].Requests() - served; got != 500 {
			t.Errorf("the healthy distributor served %d of 500", got)
		}
	})
}

// stallingProxy forwards TCP between the gateway and an endpoint until it
// is told to stall: from then on it stops reading (and so forwarding) in
// both directions, and new connections are accepted but never forwarded,
// like a peer that vanished behind a firewall dropping its packets. It
// keeps every socket open until the test ends.
type stallingProxy struct {
	l       net.Listener
	to      string
	stalled atomic.Bool
	done    chan struct{}
	wg      sync.WaitGroup
}

func startStallingProxy(t *testing.T, listen, to string) *stallingProxy {
	t.Helper()
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	p := &stallingProxy{l: l, to: to, done: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		close(p.done)
		l.Close()
		p.wg.Wait()
	})
	return p
}

func (p *stallingProxy) Addr() string { return p.l.Addr().String() }

// Stall stops all forwarding.
func (p *stallingProxy) Stall() { p.stalled.Store(true) }

func (p *stallingProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.to)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Add(3)
		go p.pipe(up, c)
		go p.pipe(c, up)
		go func() {
			defer p.wg.Done()
			<-p.done
			c.Close()
			up.Close()
		}()
	}
}

// pipe copies src to dst until the proxy stalls, then holds both open
// without reading until the test ends.
func (p *stallingProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for !p.stalled.Load() {
		_ = src.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		n, err := src.Read(buf)
		if n > 0 && !p.stalled.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil && !isTimeout(err) {
			return
		}
	}
	<-p.done
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestEndpointStopsReadingMidBody: the connection to the only endpoint
// stops moving while 1 MiB bodies are being sent (the endpoint "stops
// reading": flow control blocks the gateway's writes). 100 such pushes end
// at the timeout with 504 and release their goroutines; none is retried
// (part of the request may have reached the distributor).
func TestEndpointStopsReadingMidBody(t *testing.T) {
	// The timeout counts from the start of the request, upload included:
	// 1.5s leaves a busy machine time to upload each 1 MiB body to the
	// gateway, so every push ends at the stalled call, not at its upload.
	const n, timeout = 60, 1500 * time.Millisecond
	cl := startCluster(t, 1)
	proxy := startStallingProxy(t, standin.GroupIP(1)+":0", cl.Addr(0))
	h := newHandler(t, cl, Options{Target: "dns:///" + proxy.Addr(), Timeout: timeout})
	srv := frontend(t, h)
	waitReady(t, h, 1)
	body := bytes.Repeat([]byte{'x'}, 1<<20)
	// The stand-in decodes the body: 400 proves a whole body got through
	// (on a busy machine a 1 MiB push may miss the timeout at first).
	client := oneConnClient(t)
	standin.WaitFor(t, 20*time.Second, "a 1 MiB push through the proxy", func() bool {
		code, _, _, err := post(client, srv.URL, body)
		return err == nil && code == http.StatusBadRequest
	})
	client.CloseIdleConnections()
	baseline := standin.NumGoroutines("standin.HangUntil")
	served := cl.Distributors[0].Requests()

	proxy.Stall()
	counts := pushMany(t, srv.URL, n, 20, body, nil)
	if counts[http.StatusGatewayTimeout] != n {
		t.Fatalf("statuses %v, want %d × 504", counts, n)
	}
	if got := cl.Distributors[0].Requests() - served; got != 0 {
		t.Errorf("%d calls reached the distributor through a stalled connection", got)
	}
	standin.WaitGoroutines(t, baseline, 10, "standin.HangUntil")
}

// TestKeepaliveDetectsBlackHole: an idle connection whose peer vanished
// (every packet dropped, no RST) is found dead by HTTP/2 keepalive within
// keepalive time + timeout, instead of the next pushes finding out at their
// own timeout; the endpoint then leaves READY.
func TestKeepaliveDetectsBlackHole(t *testing.T) {
	t.Parallel() // ~11s of waiting for keepalive; holds no shared counters
	const kaTime, kaTimeout = MinKeepaliveTime, time.Second
	cl := startCluster(t, 1)
	proxy := startStallingProxy(t, standin.GroupIP(2)+":0", cl.Addr(0))
	h := newHandler(t, cl, Options{Target: "dns:///" + proxy.Addr(), KeepaliveTime: kaTime, KeepaliveTimeout: kaTimeout})
	waitReady(t, h, 1)
	if w := serve(h, pushRequest(standin.RemoteWriteBody(10, 1))); w.Code != http.StatusOK {
		t.Fatalf("warm-up: %d %q", w.Code, w.Body)
	}
	proxy.Stall()
	stalled := time.Now()
	// Polled with slack for a busy machine on top of the bound.
	bound := kaTime + kaTimeout
	standin.WaitFor(t, bound+10*time.Second, "the endpoint to leave READY", func() bool {
		eps := h.Endpoints()
		return len(eps) == 1 && eps[0].State != "READY"
	})
	took := time.Since(stalled)
	t.Logf("black hole detected after %v (keepalive %v + %v)", took.Round(10*time.Millisecond), kaTime, kaTimeout)
	if took < kaTime-time.Second {
		t.Errorf("left READY after %v, before any keepalive ping was due: detected by something else", took)
	}
}

// TestSilentEndpointUnreachable: an endpoint that takes connections but
// never speaks HTTP/2 makes the Handler Unreachable once the connect
// timeout has passed, and it stays so through the next attempt (CONNECTING
// for another connect timeout) as long as no endpoint is READY.
func TestSilentEndpointUnreachable(t *testing.T) {
	t.Parallel()
	silent := listenSilent(t, "127.0.0.1:0")
	h, err := New(Options{Target: "dns:///" + silent.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	standin.WaitFor(t, 30*time.Second, "unreachable after the connect timeout", h.Unreachable)
	attempts := silent.accepted.Load()
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if !h.Unreachable() {
			t.Fatalf("reachable again during attempt %d to an endpoint that never answers", silent.accepted.Load())
		}
	}
	if silent.accepted.Load() == attempts {
		t.Error("no new connection attempt within 8 s: the check did not span one")
	}
}

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
// its answer from being written: an answer larger than the connection's
// buffers, and a refusal as large (a 5xx, which dskit's httpgrpc server
// returns as a gRPC error carrying the answer).
func TestSlowReaderHoldsNoBody(t *testing.T) {
	for name, answer := range map[string]standin.Behavior{
		"a 200": func(w http.ResponseWriter, r *http.Request) bool {
			_, _ = w.Write(make([]byte, 4<<20))
			return true
		},
		"a 500": func(w http.ResponseWriter, r *http.Request) bool {
			http.Error(w, string(bytes.Repeat([]byte("e"), 1<<20)), http.StatusInternalServerError)
			return true
		},
	} {
		t.Run(name, func(t *testing.T) { slowReaderHoldsNoBody(t, answer) })
	}
}

func slowReaderHoldsNoBody(t *testing.T, answer standin.Behavior) {
	var done atomic.Int64
	cl := startCluster(t, 1)
	cl.Distributors[0].SetBehavior(answer)
	h := newHandler(t, cl, Options{Retries: Ptr(0), OnDone: func(*http.Request, string, int) { done.Add(1) }})
	waitReady(t, h, 1)
	l := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	c, s := net.Pipe()
	l.conns <- s
	t.Cleanup(func() { c.Close() })
	body := bytes.Repeat([]byte("b"), 1<<20)
	go fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: gw\r\nX-Scope-OrgID: tenant-1\r\nContent-Length: %d\r\n\r\n%s",
		standin.PushPath, len(body), body)
	go func() { _, _ = c.Read(make([]byte, 64)) }() // the start of the answer, then nothing more
	standin.WaitFor(t, 20*time.Second, "the call made", func() bool { return cl.Distributors[0].Requests() == 1 })
	standin.WaitFor(t, 20*time.Second, "the body out of the budget", func() bool { return h.own.budget.Used() == 0 })
	if n := done.Load(); n != 0 {
		t.Fatalf("the request ended (%d): the answer was not held by the slow reader", n)
	}
}
