package grpcpush

import (
	"math"
	"runtime/debug"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxBufferedBytes returns the default bound of a Budget: half the
// Go memory limit when one is set (Caddy sets it to 90 % of the
// container's cgroup memory limit, or of the machine's memory without
// one), else 1 GiB; never less than
// maxRequestBody, so that the largest accepted body can always be held.
func DefaultMaxBufferedBytes(maxRequestBody int64) int64 {
	limit := int64(1 << 30)
	if mem := debug.SetMemoryLimit(-1); mem < math.MaxInt64 {
		limit = mem / 2
	}
	return max(limit, maxRequestBody)
}

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
	size := int64(cap(*buf))
	b.used.Add(-size)
	b.measure(-size)
	bodyPool.Put(buf)
}

func (b *Budget) measure(delta int64) {
	if b.held != nil {
		b.held.Add(float64(delta))
	}
}
