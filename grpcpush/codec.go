package grpcpush

import (
	"fmt"

	"github.com/grafana/dskit/httpgrpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// codecName is the content-subtype sent to the server. It must be "proto":
// the server decodes with its own proto codec, and the bytes produced here
// are exactly what dskit's generated HTTPRequest.Marshal produces.
const codecName = "proto"

// bodyFieldTag is the tag byte of HTTPRequest.body (field 4, bytes).
var bodyFieldTag = byte(protowire.EncodeTag(4, protowire.BytesType))

// tunnelCodec encodes a tunnelRequest without copying its body and decodes
// responses with dskit's generated (gogo) methods. It is passed per
// ClientConn with grpc.ForceCodecV2, so nothing global is replaced.
type tunnelCodec struct{}

var _ encoding.CodecV2 = tunnelCodec{}

// Name implements encoding.CodecV2.
func (tunnelCodec) Name() string { return codecName }

// Marshal implements encoding.CodecV2. For a tunnelRequest the result shares
// the request's pooled body buffer: fields 1-3 (method, url, headers) are
// encoded by dskit's generated code into the headroom right in front of the
// body, followed by the tag and length of field 4, so the message is one
// contiguous slice of that buffer (or, with huge headers, a separate prefix
// buffer plus the body). gRPC releases its references when it is done, which
// may be after the call returned; the buffer then goes back to the pool.
func (tunnelCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *tunnelRequest:
		return m.marshal()
	case *httpgrpc.HTTPRequest:
		b, err := m.Marshal()
		return mem.BufferSlice{mem.SliceBuffer(b)}, err
	default:
		return nil, fmt.Errorf("grpcpush codec: cannot marshal %T", v)
	}
}

// Unmarshal implements encoding.CodecV2 for *httpgrpc.HTTPResponse. The
// generated Unmarshal copies what it keeps, so data can be freed afterwards.
func (tunnelCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*httpgrpc.HTTPResponse)
	if !ok {
		return fmt.Errorf("grpcpush codec: cannot unmarshal into %T", v)
	}
	if len(data) == 1 {
		return m.Unmarshal(data[0].ReadOnlyData())
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return m.Unmarshal(buf.ReadOnlyData())
}

// tunnelRequest is the outgoing message: dskit's HTTPRequest holding method,
// URL and headers, plus the body, which lives in buf after headroom bytes.
type tunnelRequest struct {
	msg     httpgrpc.HTTPRequest // Body stays nil
	buf     *[]byte              // headroom + body, from bodyPool
	bodyLen int
	root    mem.Buffer // owns buf; the call holds one reference
	// shared: other calls send the same body at the same time (a mirror's
	// copy), so the prefix goes into a buffer of its own, not the headroom
	// that the request's own call writes.
	shared bool
	// msgSize is msg.Size() once known (0: not yet): the metadata and the
	// encoding both need it, and msg does not change once the call starts.
	msgSize int
}

// Size returns the length of the marshalled message, as dskit's generated
// HTTPRequest.Size does for the same request (for the message-size
// metadata).
func (m *tunnelRequest) Size() int {
	n, p := m.prefixSize()
	return n + p + m.bodyLen
}

// prefixSize returns the length n of fields 1-3 and p of the body field's
// tag and length.
func (m *tunnelRequest) prefixSize() (n, p int) {
	if m.msgSize == 0 {
		m.msgSize = m.msg.Size()
	}
	n = m.msgSize
	if m.bodyLen > 0 { // proto3 omits an empty bytes field, as gogo does
		p = 1 + protowire.SizeVarint(uint64(m.bodyLen))
	}
	return n, p
}

// marshal encodes m as described on tunnelCodec.Marshal.
func (m *tunnelRequest) marshal() (mem.BufferSlice, error) {
	n, p := m.prefixSize()
	p += n
	if p <= headroom && !m.shared {
		start := headroom - p
		if err := m.encodePrefix((*m.buf)[start:headroom], n); err != nil {
			return nil, err
		}
		return mem.BufferSlice{m.root.Slice(start, headroom+m.bodyLen)}, nil
	}
	pool := mem.DefaultBufferPool()
	prefix := pool.Get(p)
	if err := m.encodePrefix(*prefix, n); err != nil {
		pool.Put(prefix)
		return nil, err
	}
	out := mem.BufferSlice{mem.NewBuffer(prefix, pool)}
	if m.bodyLen > 0 {
		out = append(out, m.root.Slice(headroom, headroom+m.bodyLen))
	}
	return out, nil
}

// encodePrefix writes fields 1-3 (n bytes) and the body field header into dst.
func (m *tunnelRequest) encodePrefix(dst []byte, n int) error {
	if _, err := m.msg.MarshalToSizedBuffer(dst[:n]); err != nil {
		return err
	}
	if m.bodyLen > 0 {
		dst[n] = bodyFieldTag
		protowire.AppendVarint(dst[n+1:n+1], uint64(m.bodyLen))
	}
	return nil
}
