package grpcpush

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"testing"

	"github.com/grafana/dskit/httpgrpc"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// TestCallMetadataForMimirLimiter checks that every call carries the
// metadata Mimir's gRPC push limiter reads before it receives a message:
// httpgrpc-method, httpgrpc-url and message-size (the size of the message
// the server then decodes), besides the tenant.
func TestCallMetadataForMimirLimiter(t *testing.T) {
	type seen struct {
		method, url, size, tenant []string
		decoded                   int
	}
	var mu sync.Mutex
	var calls []seen
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		mu.Lock()
		calls = append(calls, seen{md.Get("httpgrpc-method"), md.Get("httpgrpc-url"), md.Get("message-size"),
			md.Get("x-scope-orgid"), req.(*httpgrpc.HTTPRequest).Size()})
		mu.Unlock()
		return next(ctx, req)
	}
	c := startCluster(t, 1, standin.WithUnaryInterceptors(record))
	h := newHandler(t, c, Options{})
	waitReady(t, h, 1)

	for _, body := range [][]byte{standin.RemoteWriteBody(2000, 1), nil} {
		r := pushRequest(body)
		r.URL.RawQuery = "a=1"
		r.RequestURI = standin.PushPath + "?a=1"
		if len(body) == 0 {
			r.Method = http.MethodGet
		}
		serve(h, r)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 {
		t.Fatalf("%d calls, want 2", len(calls))
	}
	for i, want := range []string{http.MethodPost, http.MethodGet} {
		got := calls[i]
		one := func(name string, v []string, want string) {
			if len(v) != 1 || v[0] != want {
				t.Errorf("call %d: %s = %q, want exactly [%q]", i, name, v, want)
			}
		}
		one("httpgrpc-method", got.method, want)
		one("httpgrpc-url", got.url, standin.PushPath+"?a=1")
		one("message-size", got.size, strconv.Itoa(got.decoded))
		one("x-scope-orgid", got.tenant, testTenant)
	}
}
