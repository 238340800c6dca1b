package grpcpush

import (
	"math"
	"runtime"
	"runtime/debug"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/mem"
)

// DefaultMaxBufferedBytes returns the default bound of a Budget: half the
// Go memory limit when one is set (Caddy sets it to 90 % of the
// container's cgroup memory limit, or of the machine's memory without
// one), else 1 GiB; never less than MinBufferedBytes(maxRequestBody), so
// that the largest accepted body can always be held.
func DefaultMaxBufferedBytes(maxRequestBody int64) int64 {
	limit := int64(1 << 30)
	if mem := debug.SetMemoryLimit(-1); mem < math.MaxInt64 {
		limit = mem / 2
	}
	return max(limit, MinBufferedBytes(maxRequestBody))
}

// MinBufferedBytes is the smallest Budget that holds a body of
// maxRequestBody bytes while it is read: 1.6 to 3 times it (164 MiB for
// 100 MiB, 12 MiB for 4 MiB), as its buffer grows in powers of two and the
// last two are held while the bytes move.
func MinBufferedBytes(maxRequestBody int64) int64 { return peakRead(maxRequestBody) }

// Budget bounds the request body bytes held at once by the requests that
// share it: bodies being read, and bodies waiting for or in their call
// (gRPC holds a body until its last attempt is done). A body's buffer is
// counted from the moment it is taken, before a byte of it arrived, until
// it is given back; a request whose next buffer would go over the bound
// stops reading and is answered 503. It implements grpc-go's
// mem.BufferPool, so that gRPC gives the buffers back through it.
type Budget struct {
	limit int64
	used  atomic.Int64

	held prometheus.Gauge   // nil: not measured
	full prometheus.Counter // nil: not measured
}

// NewBudget returns a Budget of limit bytes (limit ≤ 0:
// DefaultMaxBufferedBytes of DefaultMaxRequestBody). With metrics it keeps
// metrics_gateway_grpc_buffered_bytes and _buffer_full_total of backend.
func NewBudget(limit int64, metrics *Metrics, backend string) *Budget {
	if limit <= 0 {
		limit = DefaultMaxBufferedBytes(DefaultMaxRequestBody)
	}
	b := &Budget{limit: limit}
	if metrics != nil {
		b.held = metrics.buffered.WithLabelValues(backend)
		b.full = metrics.bufferFull.WithLabelValues(backend)
	}
	return b
}

// Limit returns the bound in bytes.
func (b *Budget) Limit() int64 { return b.limit }

// Used returns the bytes held now.
func (b *Budget) Used() int64 { return b.used.Load() }

// take returns a buffer of length n when the budget can hold its capacity
// on top of what it holds, else ErrBudgetFull.
func (b *Budget) take(n int) (*[]byte, error) {
	size := int64(capFor(n))
	for {
		used := b.used.Load()
		if used+size > b.limit {
			if b.full != nil {
				b.full.Inc()
			}
			return nil, ErrBudgetFull
		}
		if b.used.CompareAndSwap(used, used+size) {
			break
		}
	}
	b.measure(size)
	return bodyPool.Get(n), nil
}

// Get implements mem.BufferPool. gRPC does not take buffers from the
// request's pool; should it, the buffer is counted without a bound, so that
// Put stays balanced.
func (b *Budget) Get(n int) *[]byte {
	size := int64(capFor(n))
	b.used.Add(size)
	b.measure(size)
	return bodyPool.Get(n)
}

// Put implements mem.BufferPool: it gives back a buffer from take or Get.
func (b *Budget) Put(buf *[]byte) {
	b.uncount(int64(cap(*buf)))
	bodyPool.Put(buf)
}

// uncount gives size bytes back to the bound.
func (b *Budget) uncount(size int64) {
	b.used.Add(-size)
	b.measure(-size)
}

// lease returns the pool through which a body's buffer, shared with gRPC
// (mem.NewBuffer), goes back to b. gRPC drops its references through Put,
// except when a connection closes while a stream still has data queued:
// grpc-go's loopy writer then frees only what its control buffer holds, not
// what it had taken into a stream. Such a buffer would stay counted for good,
// and each endpoint that died mid-send would shrink max_buffered_bytes until
// every request got 503. A leased buffer that becomes garbage without its
// Put is given back to b (not to the pool) once the collector finds it.
func (b *Budget) lease(buf *[]byte) mem.BufferPool {
	l := &lease{budget: b}
	l.cleanup = runtime.AddCleanup(l, forgetLeaked, leaked{budget: b, size: int64(cap(*buf))})
	return l
}

// A lease is a Budget for one buffer; see Budget.lease.
type lease struct {
	budget  *Budget
	cleanup runtime.Cleanup
}

// Get implements mem.BufferPool (gRPC does not call it: see Budget.Get).
func (l *lease) Get(n int) *[]byte { return l.budget.Get(n) }

// Put implements mem.BufferPool: the buffer is back, nothing is leaked.
func (l *lease) Put(buf *[]byte) {
	l.cleanup.Stop()
	l.budget.Put(buf)
}

// leaked is what the cleanup of a lease needs: nothing that holds the lease.
type leaked struct {
	budget *Budget
	size   int64
}

// forgetLeaked uncounts a buffer that gRPC lost without giving it back.
func forgetLeaked(l leaked) { l.budget.uncount(l.size) }

func (b *Budget) measure(delta int64) {
	if b.held != nil {
		b.held.Add(float64(delta))
	}
}
