package grpcpush

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/connectivity"
)

// A backend can sit with no READY endpoint for a long time without any call
// failing loudly: DNS still answers, connections are refused or time out and
// gRPC keeps retrying them in the background. watchReadiness makes that
// visible: once a Handler has had no READY endpoint for longer than its
// refresh interval it logs a warning (again every minute, or every refresh
// if that is longer, while it lasts) naming the target, the addresses and
// the last connection error, and an info line when an endpoint is READY
// again.

// readinessWatch is the goroutine behind watchReadiness.
type readinessWatch struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (w *readinessWatch) stop() {
	w.cancel()
	w.wg.Wait()
}

// readinessCheckEvery is how often readiness is sampled: often enough that
// the warning comes close to the refresh mark, rarely enough to cost nothing.
func readinessCheckEvery(refresh time.Duration) time.Duration {
	return max(refresh/4, 10*time.Millisecond)
}

func (h *Handler) watchReadiness() *readinessWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &readinessWatch{cancel: cancel}
	w.wg.Go(func() {
		tick := time.NewTicker(readinessCheckEvery(h.s.refresh))
		defer tick.Stop()
		unreadySince, lastWarn := time.Now(), time.Time{}
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				if h.tracker.readyCount() > 0 {
					if !lastWarn.IsZero() {
						h.logger.Get().Info("backend has a READY endpoint again",
							zap.String("target", h.s.target.String()), zap.Duration("unready_for", now.Sub(unreadySince)))
					}
					unreadySince, lastWarn = now, time.Time{}
					continue
				}
				if now.Sub(unreadySince) > h.s.refresh && now.Sub(lastWarn) >= max(h.s.refresh, warnEvery) {
					lastWarn = now
					h.warnUnready(now.Sub(unreadySince))
				}
			}
		}
	})
	return w
}

func (h *Handler) warnUnready(d time.Duration) {
	var addrs []string
	for _, st := range h.tracker.statuses() {
		addrs = append(addrs, st.Address+" "+st.State)
	}
	fields := []zap.Field{
		zap.String("target", h.s.target.String()),
		zap.Duration("unready_for", d.Round(time.Millisecond)),
		zap.Strings("endpoints", addrs),
	}
	if err := h.tracker.lastConnError(); err != nil {
		fields = append(fields, zap.NamedError("last_connection_error", err))
	}
	h.logger.Get().Warn("backend has no READY endpoint", fields...)
}

// readyCount is the number of endpoints with a READY connection.
func (t *tracker) readyCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, ep := range t.byAddr {
		if connectivity.State(ep.state.Load()) == connectivity.Ready {
			n++
		}
	}
	return n
}

// noteConnError remembers the error of a connection attempt that failed.
func (t *tracker) noteConnError(err error) {
	if err != nil {
		t.connErr.Store(&err)
	}
}

func (t *tracker) lastConnError() error {
	if p := t.connErr.Load(); p != nil {
		return *p
	}
	return nil
}
