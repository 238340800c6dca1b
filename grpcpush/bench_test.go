package grpcpush

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"testing"

	"github.com/grafana/dskit/httpgrpc"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
)

// Most benchmarks run the endpoint (dskit's httpgrpc server) in the same
// process, so B/op and allocs/op include the server's share; compare the
// grpcpush and dskit-client rows, which share that server. The
// grpcpush-server-apart row runs the endpoint in a child process: its B/op
// and allocs/op are the gateway's alone.

// discardWriter is a reusable http.ResponseWriter that keeps only the status.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) reset()                      { clear(w.h); w.code = http.StatusOK }

// rewindBody is a reusable request body.
type rewindBody struct{ bytes.Reader }

func (*rewindBody) Close() error { return nil }

// benchCluster is one stand-in that reads the body and answers 200 without
// decoding it, so the numbers are about the tunnel.
func benchCluster(b *testing.B) *cluster {
	c := startCluster(b, 1)
	c.Distributors[0].SetBehavior(func(w http.ResponseWriter, _ *http.Request) bool {
		w.WriteHeader(http.StatusOK)
		return true
	})
	return c
}

func BenchmarkTunnelPush2000(b *testing.B) {
	body := standin.RemoteWriteBody(2000, 1)
	c := benchCluster(b)

	b.Run("grpcpush", func(b *testing.B) {
		h := newHandler(b, c, Options{})
		waitReady(b, h, 1)
		benchHandler(b, h, body)
	})

	// The endpoint in another process: B/op and allocs/op are the gateway's.
	b.Run("grpcpush-server-apart", func(b *testing.B) {
		h := newHandler(b, nil, Options{Target: standin.StartRemote(b, 1)})
		waitReady(b, h, 1)
		benchHandler(b, h, body)
	})

	// The straightforward tunnel: dskit's helpers and grpc-go's default codec.
	b.Run("dskit-client", func(b *testing.B) {
		conn, err := grpc.NewClient(c.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultServiceConfig(`{"loadBalancingPolicy":"round_robin"}`))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		client := httpgrpc.NewHTTPClient(conn)
		naive := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			req, err := httpgrpc.FromHTTPRequest(r)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			ctx := metadata.AppendToOutgoingContext(r.Context(), "x-scope-orgid", r.Header.Get("X-Scope-OrgID"))
			resp, err := client.Handle(ctx, req)
			if err != nil {
				httpgrpc.WriteError(w, err)
				return
			}
			_ = httpgrpc.WriteResponse(w, resp)
		})
		benchHandler(b, naive, body)
	})
}

// benchHandler sends body through h b.N times.
func benchHandler(b *testing.B, h http.Handler, body []byte) {
	r := pushRequest(body)
	rb := &rewindBody{}
	r.Body = rb
	w := &discardWriter{h: http.Header{}}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rb.Reset(body)
		w.reset()
		h.ServeHTTP(w, r)
		if w.code != http.StatusOK {
			b.Fatalf("status %d", w.code)
		}
	}
}

// BenchmarkTunnelPush2000Parallel is the same push from many goroutines.
func BenchmarkTunnelPush2000Parallel(b *testing.B) {
	body := standin.RemoteWriteBody(2000, 1)
	c := benchCluster(b)
	h := newHandler(b, c, Options{})
	waitReady(b, h, 1)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		if code := pushUntil(h, body, pb.Next); code != http.StatusOK {
			b.Errorf("status %d", code)
		}
	})
}

// BenchmarkPolicyCPU compares the gateway's CPU per push under each
// lb_policy: three endpoints in a child process, 8 pushes in flight per
// GOMAXPROCS. cpu-ns/op is this process's user + system CPU per push (the
// gateway's work and the benchmark's small loop), the figure least_conn's
// "at most 5 % more CPU per request than round_robin" is about; ns/op is
// wall time, which on a small machine also holds the endpoints' share.
// Run it several times in a loop rather than with -count, which runs one
// policy's repeats back to back: a loop alternates them (BENCHMARKS.md).
func BenchmarkPolicyCPU(b *testing.B) {
	body := standin.RemoteWriteBody(2000, 1)
	target := standin.StartRemote(b, 3)
	for _, policy := range []string{LBRoundRobin, LBLeastConn} {
		b.Run("policy="+policy, func(b *testing.B) {
			h := newHandler(b, nil, Options{Target: target, LBPolicy: policy})
			waitReady(b, h, 3)
			warmUp(b, h, body, 1000)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			standin.ParallelCPU(b, func(pb *testing.PB) {
				if code := pushUntil(h, body, pb.Next); code != http.StatusOK {
					b.Errorf("status %d", code)
				}
			})
		})
	}
}

// warmUp sends n pushes from 8 goroutines before measuring: pools, buffers
// and the heap's size settle, so a short run measures the steady state.
func warmUp(b *testing.B, h http.Handler, body []byte, n int) {
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			left := n / 8
			next := func() bool { left--; return left >= 0 }
			if code := pushUntil(h, body, next); code != http.StatusOK {
				b.Errorf("warm-up: status %d", code)
			}
		})
	}
	wg.Wait()
}

// pushUntil sends body through h, reusing one request and writer, while
// next says so. It returns 200, or the first other status.
func pushUntil(h http.Handler, body []byte, next func() bool) int {
	r := pushRequest(body)
	rb := &rewindBody{}
	r.Body = rb
	w := &discardWriter{h: http.Header{}}
	for next() {
		rb.Reset(body)
		w.reset()
		h.ServeHTTP(w, r)
		if w.code != http.StatusOK {
			return w.code
		}
	}
	return http.StatusOK
}

// BenchmarkRequestBuild is the gateway's own work before the call: read the
// body into a pooled buffer, collect the headers, encode the message.
func BenchmarkRequestBuild(b *testing.B) {
	body := standin.RemoteWriteBody(2000, 1)
	r := pushRequest(body)
	rb := &rewindBody{}
	r.Body = rb
	budget := NewBudget(0, nil, "")
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		rb.Reset(body)
		c := getCall()
		c.site = &site{budget: budget}
		buf, n, err := readBody(r.Body, r.ContentLength, DefaultMaxRequestBody, budget)
		if err != nil {
			b.Fatal(err)
		}
		c.setBody(buf, n)
		c.setRequest(r, nil)
		out, err := tunnelCodec{}.Marshal(&c.req)
		if err != nil {
			b.Fatal(err)
		}
		out.Free()
		c.releaseBody()
		putCall(c)
	}
}

// BenchmarkWriteResponse writes a typical push answer (RW2: 204 and the
// -Written headers) to the client.
func BenchmarkWriteResponse(b *testing.B) {
	resp := &httpgrpc.HTTPResponse{Code: http.StatusNoContent, Headers: []*httpgrpc.Header{
		{Key: standin.HeaderSamplesWritten, Values: []string{"2000"}},
		{Key: standin.HeaderHistogramsWritten, Values: []string{"0"}},
		{Key: standin.HeaderExemplarsWritten, Values: []string{"0"}},
	}}
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		w.reset()
		writeResponse(w, resp, false)
	}
}

// BenchmarkOutgoingMetadata is the per-request metadata context.
func BenchmarkOutgoingMetadata(b *testing.B) {
	c := getCall()
	defer putCall(c)
	c.req.msg.Method, c.req.msg.Url, c.req.bodyLen = http.MethodPost, "/api/v1/push", 42000
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.req.msgSize = 0
		_ = metadata.NewOutgoingContext(ctx, c.outgoingMD(testTenant))
	}
}

// BenchmarkBodyBuffer takes and gives back a push's body buffer (64 KiB)
// from bodyPool and from grpc-go's default pool, which clears every buffer
// it hands out: the reason the body has a pool of its own.
func BenchmarkBodyBuffer(b *testing.B) {
	const n = headroom + firstChunk
	b.Run("bodyPool", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			bodyPool.Put(bodyPool.Get(n))
		}
	})
	b.Run("grpc-mem-default", func(b *testing.B) {
		p := mem.DefaultBufferPool()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			p.Put(p.Get(n))
		}
	})
}
