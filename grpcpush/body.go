package grpcpush

import (
	"errors"
	"io"
	"math/bits"
	"sync"
)

// Request bodies are read once into a pooled buffer that later becomes the
// gRPC message itself (see codec.go): the buffer starts with headroom bytes
// into which the encoded method, URL and headers are written right before the
// body, so the whole message is one contiguous slice and the body is never
// copied inside the gateway.
//
// A buffer grows as the body arrives, never ahead of it: Content-Length is
// a hint that costs a client nothing to send, so it reserves at most
// firstChunk. Every buffer is counted against a Budget from the moment it is
// taken until gRPC drops its last reference to it.
const (
	// headroom is reserved in front of the body for the message prefix. It
	// holds the prefix of every usual request; a larger one (huge headers)
	// goes into a separate buffer instead.
	headroom = 2 << 10
	// firstChunk is the most of a body read before the buffer grows: with
	// headroom it fills the 64 KiB class, which holds a Remote-Write push of
	// Prometheus' default 2000 samples (about 40 KB) whole.
	firstChunk = 64<<10 - headroom
	// minClassShift and maxClassShift bound the pooled buffer sizes, 4 KiB
	// to 16 MiB; larger buffers are allocated and dropped after use so that
	// a rare huge push does not pin memory.
	minClassShift = 12
	maxClassShift = 24
)

// Errors of reading a body: over the body limit, and over a Budget.
var (
	ErrBodyTooLarge = errors.New("request body too large")
	ErrBudgetFull   = errors.New("request bodies held at max_buffered_bytes")
)

// bufferPool is a set of sync.Pools of *[]byte by power-of-two size class.
// grpc-go's mem pools would do the same, but they clear the whole buffer on
// every Get, wasted work for a buffer the body is about to overwrite, and
// grpc-go's default tiers hand a 64 KiB push a 1 MiB buffer: measured by
// BenchmarkBodyBuffer, 18-34 ns here against 13-20 µs there per push.
type bufferPool struct {
	classes [maxClassShift - minClassShift + 1]sync.Pool
}

// bodyPool holds the request buffers of every Handler.
var bodyPool = &bufferPool{}

// classOf returns the index of the smallest class holding n bytes, or -1
// when n is larger than the largest class.
func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	shift := bits.Len(uint(n - 1))
	if shift > maxClassShift {
		return -1
	}
	return shift - minClassShift
}

// capFor returns the capacity of the buffer Get(n) returns.
func capFor(n int) int {
	if c := classOf(n); c >= 0 {
		return 1 << (c + minClassShift)
	}
	return n
}

// BufferBytes is how many bytes a body of n bytes sent with its
// Content-Length holds while the gateway keeps it (a request in flight, a
// mirror's copy): its pooled buffer, a power of two from 4 KiB with room for
// the message prefix in front, as metrics_gateway_grpc_buffered_bytes
// counts it. A 42 KB push holds 64 KiB. A body of unknown length holds at
// least the first chunk's 64 KiB.
func BufferBytes(n int) int { return capFor(headroom + n) }

// peakRead is the most a body of up to limit bytes holds at once while
// readBody reads it: the buffer grows by doubling as the bytes arrive, and
// while they move into the next buffer both are held (for 100 MiB:
// 64 MiB + 100 MiB). A Budget below it could never hold the largest body
// accepted, and a client would retry that push's 503 for ever.
func peakRead(limit int64) int64 {
	want := headroom + int(limit) + 1 // a body of unknown length: one byte over shows it is too large
	n := min(want, headroom+firstChunk)
	peak := capFor(n)
	for n < want {
		next := min(2*n, want)
		peak = max(peak, capFor(n)+capFor(next))
		n = next
	}
	return int64(peak)
}

// Get returns a buffer of length n and capacity capFor(n).
func (p *bufferPool) Get(n int) *[]byte {
	c := classOf(n)
	if c < 0 {
		b := make([]byte, n)
		return &b
	}
	if v, ok := p.classes[c].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, 1<<(c+minClassShift))
	return &b
}

// Put returns a buffer obtained from Get.
func (p *bufferPool) Put(b *[]byte) {
	c := cap(*b)
	if c < 1<<minClassShift || c > 1<<maxClassShift || c&(c-1) != 0 {
		return // not one of ours (or outsized): let the GC have it
	}
	p.classes[classOf(c)].Put(b)
}

// readBody reads a body of contentLength bytes (-1: unknown, read to EOF)
// into a buffer from budget, after headroom bytes, growing it as the bytes
// arrive. It returns the buffer and the body length; limit is the largest
// body accepted (ErrBodyTooLarge beyond, before reading when announced).
// When budget cannot hold the next buffer it stops reading and returns
// ErrBudgetFull. The caller owns the buffer and gives it back to budget.
func readBody(r io.Reader, contentLength, limit int64, budget *Budget) (*[]byte, int, error) {
	if contentLength > limit {
		return nil, 0, ErrBodyTooLarge
	}
	// want is the largest buffer the body may need: its length, or one
	// byte over the limit to see an unknown length go over it.
	want := headroom + int(limit) + 1
	if contentLength >= 0 {
		want = headroom + int(contentLength)
	}
	buf, err := budget.take(min(want, headroom+firstChunk))
	if err != nil {
		return nil, 0, err
	}
	n := 0
	for headroom+n < want {
		if headroom+n == len(*buf) {
			bigger, err := budget.take(min(2*len(*buf), want))
			if err != nil {
				budget.Put(buf)
				return nil, 0, err
			}
			copy(*bigger, (*buf)[:headroom+n])
			budget.Put(buf)
			buf = bigger
		}
		m, err := r.Read((*buf)[headroom+n:])
		n += m
		if err == io.EOF && contentLength < 0 {
			break
		}
		if err == io.EOF && headroom+n < want {
			err = io.ErrUnexpectedEOF
		}
		if err != nil && err != io.EOF {
			budget.Put(buf)
			return nil, 0, err
		}
	}
	if int64(n) > limit {
		budget.Put(buf)
		return nil, 0, ErrBodyTooLarge
	}
	*buf = (*buf)[:headroom+n]
	return buf, n, nil
}
