package grpcpush

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/examples/standin"
)

// TestCloseWhenIdle: a Handler released while a request is in flight
// closes as soon as that request is answered, long before the drain
// timeout; one with nothing in flight closes at once.
func TestCloseWhenIdle(t *testing.T) {
	c := startCluster(t, 1)
	h := newHandler(t, c, Options{})
	waitReady(t, h, 1)
	release := make(chan struct{})
	var held atomic.Int64
	c.Distributors[0].SetBehavior(holdUntil(release, &held))
	code := make(chan int, 1)
	go func() { code <- serve(h, pushRequest(standin.RemoteWriteBody(10, 1))).Code }()
	waitFor(t, 10*time.Second, "the call held", func() bool { return held.Load() == 1 })

	h.CloseWhenIdle(time.Minute)
	time.Sleep(100 * time.Millisecond) // nothing to poll: the Handler must stay open
	if h.closed.Load() {
		t.Fatal("closed with a request in flight")
	}
	close(release)
	if got := <-code; got != http.StatusOK {
		t.Errorf("the request in flight got %d, want 200", got)
	}
	waitFor(t, 10*time.Second, "closed once idle", h.closed.Load)

	idle := newHandler(t, c, Options{})
	idle.CloseWhenIdle(time.Minute)
	waitFor(t, 10*time.Second, "an idle Handler closed", idle.closed.Load)
}
