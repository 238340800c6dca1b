package standin

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/grafana/dskit/httpgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
)

// echo answers every request with its own body.
var echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	_, _ = w.Write(b)
})

// TestMimirCodecEchoes sends bodies that span several HTTP/2 frames (so the
// codec gathers them from several buffers), many at once so pooled buffers
// are reused, and checks that every body arrives byte for byte, decoded by
// this codec and not grpc-go's.
func TestMimirCodecEchoes(t *testing.T) {
	pool := &recordingPool{BufferPool: newMimirCodec().pool}
	codec := WithServerOptions(grpc.ForceServerCodecV2(&mimirCodec{pool: pool}))
	srv, err := StartGRPC("127.0.0.1:0", echo, codec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := httpgrpc.NewHTTPClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-scope-orgid", "t")

	const callers, rounds = 8, 5
	var wg sync.WaitGroup
	errs := make(chan string, callers*rounds)
	for c := range callers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			for r := range rounds {
				body := make([]byte, 40_000+rng.IntN(260_000)) // several 16 KiB frames
				for i := range body {
					body[i] = byte(rng.Uint32())
				}
				resp, err := client.Handle(ctx, &httpgrpc.HTTPRequest{Method: "POST", Url: PushPath, Body: body})
				switch {
				case err != nil:
					errs <- err.Error()
				case resp.Code != 200 || !bytes.Equal(resp.Body, body):
					errs <- fmt.Sprintf("caller %d round %d: body differs", c, r)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if srv.Calls() != callers*rounds {
		t.Fatalf("calls %d, want %d", srv.Calls(), callers*rounds)
	}
	if gets, puts := pool.counts(); gets < callers*rounds || puts != gets {
		t.Fatalf("the codec's pool lent %d buffers and got %d back; want at least %d, all back", gets, puts, callers*rounds)
	}
}

// TestMimirCodecGathersIntoFittingBuffer checks the point of the codec: a
// message in several pieces is gathered into a buffer of the next power of
// two, which is given back after decoding.
func TestMimirCodecGathersIntoFittingBuffer(t *testing.T) {
	pool := &recordingPool{BufferPool: newMimirCodec().pool}
	c := &mimirCodec{pool: pool}
	want := &httpgrpc.HTTPRequest{Method: "POST", Url: PushPath, Body: bytes.Repeat([]byte("x"), 42_000)}
	b, err := want.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	half := len(b) / 2
	data := mem.BufferSlice{mem.SliceBuffer(b[:half]), mem.SliceBuffer(b[half:])}
	var got httpgrpc.HTTPRequest
	if err := c.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Body, want.Body) || got.Url != want.Url {
		t.Fatalf("decoded %q %d bytes", got.Url, len(got.Body))
	}
	if gets, puts := pool.counts(); pool.lastCap != 64<<10 || gets != 1 || puts != 1 {
		t.Fatalf("%d buffer(s) lent, the last of %d bytes, %d given back; want 1 of 65536, given back", gets, pool.lastCap, puts)
	}
	if err := c.Unmarshal(data, new(int)); err == nil {
		t.Fatal("decoding into a non-gogo type succeeded")
	}
}

// recordingPool counts what a pool lends and gets back.
type recordingPool struct {
	mem.BufferPool
	mu         sync.Mutex
	gets, puts int
	lastCap    int
}

func (p *recordingPool) Get(n int) *[]byte {
	b := p.BufferPool.Get(n)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gets++
	p.lastCap = cap(*b)
	return b
}

func (p *recordingPool) Put(b *[]byte) {
	p.mu.Lock()
	p.puts++
	p.mu.Unlock()
	p.BufferPool.Put(b)
}

func (p *recordingPool) counts() (gets, puts int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gets, p.puts
}
