package standin

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
)

// gogoMessage is what gogo-generated messages such as dskit's
// httpgrpc.HTTPRequest implement.
type gogoMessage interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}

// mimirCodec decodes requests the way a Mimir process does, not the way
// grpc-go's default proto codec does. Mimir replaces the global "proto"
// codec with one that gathers a message spread over several frames into a
// buffer from a pool of power-of-two sizes (256 B up to 256 MiB), runs the
// gogo-generated Unmarshal on it and gives the buffer back. grpc-go's default
// pool has only five sizes (256 B, 4 KiB, 16 KiB, 32 KiB, 1 MiB), so a 42 KB
// push is gathered into a 1 MiB buffer that is cleared on every Get: about a
// tenth of a stand-in's CPU, work a real distributor does not do. Benchmarks
// that compare proxies by how busy they make the distributors need the
// distributor's cost, not grpc-go's.
//
// The generated Unmarshal copies what it keeps (the body included), so the
// buffer can be reused as soon as it returns.
type mimirCodec struct {
	pool mem.BufferPool
}

var _ encoding.CodecV2 = (*mimirCodec)(nil)

// Power-of-two pool tiers, as in Mimir: 2^8 (256 B) to 2^28 (256 MiB).
const (
	minTierShift = 8
	maxTierShift = 28
)

func newMimirCodec() *mimirCodec {
	sizes := make([]int, 0, maxTierShift-minTierShift+1)
	for s := minTierShift; s <= maxTierShift; s++ {
		sizes = append(sizes, 1<<s)
	}
	return &mimirCodec{pool: mem.NewTieredBufferPool(sizes...)}
}

// WithMimirCodec makes the server decode and encode its messages as Mimir's
// own codec does (see mimirCodec) instead of with grpc-go's default. It is
// set on this server only; nothing global is replaced.
func WithMimirCodec() GRPCOption {
	return WithServerOptions(grpc.ForceServerCodecV2(newMimirCodec()))
}

// Name implements encoding.CodecV2: the content-subtype clients send.
func (*mimirCodec) Name() string { return "proto" }

// Marshal implements encoding.CodecV2 with the generated Marshal.
func (*mimirCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(gogoMessage)
	if !ok {
		return nil, fmt.Errorf("standin codec: cannot marshal %T", v)
	}
	b, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

// Unmarshal implements encoding.CodecV2: gather, decode, give back.
func (c *mimirCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(gogoMessage)
	if !ok {
		return fmt.Errorf("standin codec: cannot unmarshal into %T", v)
	}
	buf := data.MaterializeToBuffer(c.pool)
	defer buf.Free()
	return m.Unmarshal(buf.ReadOnlyData())
}
