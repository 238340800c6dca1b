package grpcpush

import (
	"sync"
	"sync/atomic"
	"time"
)

// activity counts the requests that may still use a Handler, so that a
// Handler released by a configuration reload can close once they are done:
// Caddy cleans up the old configuration while its server may still be
// finishing requests. A request through a Priority counts in every group
// it may spill to.
type activity struct {
	n        atomic.Int64
	draining atomic.Bool
	idle     chan struct{} // closed once draining with nothing in flight
	once     sync.Once
}

func newActivity() *activity { return &activity{idle: make(chan struct{})} }

func (a *activity) enter() { a.n.Add(1) }

func (a *activity) leave() {
	if a.n.Add(-1) == 0 && a.draining.Load() {
		a.once.Do(func() { close(a.idle) })
	}
}

// CloseWhenIdle closes h once no request is in flight through it, or after
// timeout, whichever comes first, without blocking the caller.
func (h *Handler) CloseWhenIdle(timeout time.Duration) {
	a := h.active
	a.draining.Store(true)
	if a.n.Load() == 0 {
		a.once.Do(func() { close(a.idle) })
	}
	go func() {
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-a.idle:
		case <-t.C:
		}
		_ = h.Close()
	}()
}
