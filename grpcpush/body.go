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
const (
	// headroom is reserved in front of the body for the message prefix. It
	// holds the prefix of every usual request; a larger one (huge headers)
	// goes into a separate buffer instead.
	headroom = 2 << 10
	// minClassShift and maxClassShift bound the pooled buffer sizes, 4 KiB
	// to 16 MiB; larger buffers are allocated and dropped after use so that
	// a rare huge push does not pin memory.
	minClassShift = 12
	maxClassShift = 24
	// unknownLengthChunk is how much is read at a time when the client did
	// not announce a Content-Length (chunked uploads).
	unknownLengthChunk = 32 << 10
)

// errBodyTooLarge is returned when a body exceeds the limit.
var errBodyTooLarge = errors.New("request body too large")

// bufferPool is a set of sync.Pools of *[]byte by power-of-two size class.
// It implements grpc's mem.BufferPool so gRPC can hand buffers back to it.
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

// Get returns a buffer of length n (capacity at least n).
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

// readBody reads the request body into a pooled buffer after headroom bytes.
// It returns the buffer and the body length; limit is the largest body
// accepted (errBodyTooLarge beyond). The caller owns the buffer.
func readBody(r io.Reader, contentLength, limit int64) (*[]byte, int, error) {
	if contentLength > limit {
		return nil, 0, errBodyTooLarge
	}
	if contentLength >= 0 {
		return readKnown(r, int(contentLength))
	}
	return readUnknown(r, limit)
}

// readKnown reads exactly n bytes (net/http already stops at Content-Length).
func readKnown(r io.Reader, n int) (*[]byte, int, error) {
	buf := bodyPool.Get(headroom + n)
	if _, err := io.ReadFull(r, (*buf)[headroom:]); err != nil {
		bodyPool.Put(buf)
		return nil, 0, err
	}
	return buf, n, nil
}

// readUnknown reads until EOF, growing the buffer through the pool classes.
func readUnknown(r io.Reader, limit int64) (*[]byte, int, error) {
	buf := bodyPool.Get(headroom + unknownLengthChunk)
	n := 0
	for {
		if headroom+n == len(*buf) {
			if int64(n) > limit {
				bodyPool.Put(buf)
				return nil, 0, errBodyTooLarge
			}
			bigger := bodyPool.Get(int(min(2*int64(len(*buf)), headroom+limit+1)))
			copy(*bigger, (*buf)[:headroom+n])
			bodyPool.Put(buf)
			buf = bigger
		}
		m, err := r.Read((*buf)[headroom+n:])
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			bodyPool.Put(buf)
			return nil, 0, err
		}
	}
	if int64(n) > limit {
		bodyPool.Put(buf)
		return nil, 0, errBodyTooLarge
	}
	*buf = (*buf)[:headroom+n]
	return buf, n, nil
}
