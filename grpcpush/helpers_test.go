package grpcpush

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grafana/dskit/httpgrpc"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// testName is the DNS name the test DNS server answers for the cluster.
const testName = "distributor.mimir.test"

// testTenant is the tenant every test request carries.
const testTenant = "tenant-1"

// cluster is n stand-in distributors served over gRPC on 127.0.0.2... with
// one port, and a DNS server answering testName with their addresses
// (standin.Cluster), plus what the servers saw.
type cluster struct {
	*standin.Cluster
	// tenantMD counts calls whose metadata carried exactly testTenant.
	tenantMD atomic.Int64
}

// startCluster starts the peers; everything is stopped when the test ends.
func startCluster(t testing.TB, n int, opts ...standin.GRPCOption) *cluster {
	t.Helper()
	c := &cluster{}
	opts = append([]standin.GRPCOption{standin.WithUnaryInterceptors(c.countTenant)}, opts...)
	var err error
	if c.Cluster, err = standin.StartCluster(testName, n, opts...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

func (c *cluster) countTenant(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("x-scope-orgid"); len(v) == 1 && v[0] == testTenant {
			c.tenantMD.Add(1)
		}
	}
	return next(ctx, req)
}

// newHandler creates a Handler for opts (Target filled from c when empty)
// and closes it when the test ends.
func newHandler(t testing.TB, c *cluster, opts Options) *Handler {
	t.Helper()
	if opts.Target == "" {
		opts.Target = c.Target()
	}
	h, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// waitReady waits until the Handler has n READY endpoints.
func waitReady(t testing.TB, h *Handler, n int) {
	t.Helper()
	standin.WaitFor(t, 20*time.Second, strconv.Itoa(n)+" ready endpoints", func() bool {
		ready := 0
		for _, e := range h.Endpoints() {
			if e.State == "READY" {
				ready++
			}
		}
		return ready == n
	})
}

// pushRequest builds a Remote-Write 1.0 push with the test tenant.
func pushRequest(body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, standin.PushPath, bytes.NewReader(body))
	r.Header.Set("Content-Type", standin.ContentTypeRW1)
	r.Header.Set("Content-Encoding", "snappy")
	r.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	r.Header.Set("User-Agent", "Prometheus/3.5.0")
	r.Header.Set("X-Scope-OrgID", testTenant)
	return r
}

// serve runs one request through h and returns the recorded answer.
func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// frontend serves h over real HTTP on loopback.
func frontend(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

// post sends a push through a real HTTP client and drains the answer.
func post(client *http.Client, url string, body []byte) (int, http.Header, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, url+standin.PushPath, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Content-Type", standin.ContentTypeRW1)
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("X-Scope-OrgID", testTenant)
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}

// oneConnClient is a keep-alive client that uses a single connection.
func oneConnClient(t testing.TB) *http.Client {
	tr := &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// echoHTTPResponse makes an httpgrpc error status like dskit's server does.
func httpErr(code int, body string, headers map[string]string) error {
	resp := &httpgrpc.HTTPResponse{Code: int32(code), Body: []byte(body)}
	for k, v := range headers {
		resp.Headers = append(resp.Headers, &httpgrpc.Header{Key: k, Values: []string{v}})
	}
	return httpgrpc.ErrorFromHTTPResponse(resp)
}

// sliceOf wraps byte slices as a gRPC BufferSlice.
func sliceOf(parts ...[]byte) mem.BufferSlice {
	var out mem.BufferSlice
	for _, p := range parts {
		if len(p) > 0 {
			out = append(out, mem.SliceBuffer(p))
		}
	}
	return out
}

// metricValue reads a counter or gauge child.
func metricValue(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		t.Fatal(err)
	}
	switch {
	case out.Counter != nil:
		return out.Counter.GetValue()
	case out.Gauge != nil:
		return out.Gauge.GetValue()
	}
	t.Fatalf("not a counter or gauge: %v", &out)
	return 0
}

// localIP is the server address a call arrived on.
func localIP(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.LocalAddr != nil {
		if a, ok := p.LocalAddr.(*net.TCPAddr); ok {
			return a.IP.String()
		}
	}
	return ""
}
