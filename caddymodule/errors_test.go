package caddymodule_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
	"github.com/metrics-gateway/metrics_gateway/internal/testpki"
	"time"
)

// errorsCaddyfile has a gRPC distributor, response headers from the
// gateway's placeholders, and optionally a handle_errors block.
const errorsCaddyfile = `:8000 {
	header >X-MG-Route {http.metrics_gateway.route}
	header >X-MG-Backend {http.metrics_gateway.backend}
	header >X-MG-Endpoint {http.metrics_gateway.endpoint}
	metrics_gateway {
		proxy {
			default     http://127.0.0.1:1
			distributor %s {
				retries 0
			}
		}
	}
	%s
}`

const handleErrors = `handle_errors {
		header X-Handled yes
		header X-Handled-Endpoint {http.metrics_gateway.endpoint}
		respond "handled {err.status_code}: {err.message}" {err.status_code}
	}`

// TestHandleErrorsAndPlaceholders: gRPC-path errors (a 503 from the
// cluster, the 401 without a tenant) reach handle_errors with their status;
// without handle_errors they keep their one-line body; Retry-After stays on
// 503 either way. The gateway's placeholders work in header directives.
func TestHandleErrorsAndPlaceholders(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	// Calls of tenant "stopping" fail as a distributor going away does.
	unavailable := func(ctx context.Context) error {
		if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("x-scope-orgid")) == 1 && md.Get("x-scope-orgid")[0] == "stopping" {
			return status.Error(codes.Unavailable, "distributor is stopping")
		}
		return nil
	}
	cl.raw.Store(&unavailable)

	for _, withHandler := range []bool{true, false} {
		t.Run(fmt.Sprintf("handle_errors=%t", withHandler), func(t *testing.T) {
			block := ""
			if withHandler {
				block = handleErrors
			}
			c := testcaddy.StartCaddyfile(t, fmt.Sprintf(errorsCaddyfile, cl.Target(), block))

			// A successful push: placeholders in response headers.
			resp, body, err := push(c.Client, standin.RemoteWriteBody(10, 1))
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("push: %v %v %q", err, resp, body)
			}
			if r, b, e := resp.Header.Get("X-MG-Route"), resp.Header.Get("X-MG-Backend"), resp.Header.Get("X-MG-Endpoint"); r != "api_v1_push" || b != "distributor" || e != cl.Addr(0) {
				t.Errorf("placeholders: route %q backend %q endpoint %q", r, b, e)
			}

			req, _ := http.NewRequest(http.MethodGet, "http://gateway/distributor/x", nil)
			req.Header.Set("X-Scope-OrgID", "stopping")
			resp, body, err = c.Do(req)
			if err != nil || resp.StatusCode != http.StatusServiceUnavailable || !firstRetryAfter(resp.Header.Get("Retry-After")) {
				t.Fatalf("503: %v %v %q", err, resp, body)
			}
			noTenant, _ := http.NewRequest(http.MethodGet, "http://gateway/distributor/x", nil)
			resp401, body401, err := c.Do(noTenant)
			if err != nil || resp401.StatusCode != http.StatusUnauthorized {
				t.Fatalf("401: %v %v %q", err, resp401, body401)
			}
			if withHandler {
				if !strings.HasPrefix(string(body), "handled 503: distributor "+cl.Addr(0)+": unavailable:") || resp.Header.Get("X-Handled") != "yes" {
					t.Errorf("503 through handle_errors: %q", body)
				}
				if string(body401) != "handled 401: no org id" {
					t.Errorf("401 through handle_errors: %q", body401)
				}
				// The site's deferred header ops belong to the normal
				// response; error routes use the placeholders themselves.
				if e := resp.Header.Get("X-Handled-Endpoint"); e != cl.Addr(0) {
					t.Errorf("endpoint placeholder in handle_errors: %q (%v)", e, resp.Header)
				}
				return
			}
			if !strings.HasPrefix(string(body), "distributor "+cl.Addr(0)+": unavailable:") || strings.Count(string(body), "\n") != 1 {
				t.Errorf("503 body without handle_errors: %q", body)
			}
			if string(body401) != "no org id\n" {
				t.Errorf("401 body without handle_errors: %q", body401)
			}
		})
	}
}

// TestGRPCSeriesAfterChurn: calls are in flight on all three endpoints when
// two of them leave DNS. Their request series stay while those calls run
// (the calls are counted), and once the calls are done exactly the live
// endpoint's series are left.
func TestGRPCSeriesAfterChurn(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 3)
	release := make(chan struct{})
	var held atomic.Int64
	for _, d := range cl.Distributors {
		d.SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/distributor/hold" {
				return false
			}
			held.Add(1)
			<-release
			w.WriteHeader(http.StatusOK)
			return true
		})
	}
	c := testcaddy.Start(t, cl.handlerJSON(`"refresh": "100ms"`))
	body := standin.RemoteWriteBody(10, 1)
	standin.WaitFor(t, 20*time.Second, "traffic on all three", func() bool {
		_, _, _ = push(c.Client, body)
		return cl.Distributors[0].Requests() > 0 && cl.Distributors[1].Requests() > 0 && cl.Distributors[2].Requests() > 0
	})
	if got := endpointSeries(t, c); len(got) != 3 {
		t.Fatalf("series before churn: %v", got)
	}

	const inFlight = 6
	var wg sync.WaitGroup
	codes := make(chan int, inFlight)
	for i := 0; i < inFlight; i++ {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, "http://gateway/distributor/hold", nil)
			req.Header.Set("X-Scope-OrgID", "tenant-1")
			resp, _, err := c.Do(req)
			if err != nil {
				codes <- 0
				return
			}
			codes <- resp.StatusCode
		})
	}
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
		wg.Wait()
	}()
	standin.WaitFor(t, 20*time.Second, "calls in flight on all endpoints", func() bool { return held.Load() == inFlight })

	cl.List(1)
	standin.WaitFor(t, 20*time.Second, "two endpoints to leave the backend", func() bool {
		_, b, _ := c.AdminGet("/metrics_gateway/backends")
		return !strings.Contains(string(b), cl.Addr(1)) && !strings.Contains(string(b), cl.Addr(2))
	})
	if got := endpointSeries(t, c); len(got) != 3 {
		t.Errorf("series with calls in flight on removed endpoints: %v (want all three kept)", got)
	}
	close(release)
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != http.StatusOK {
			t.Errorf("held call answered %d", code)
		}
	}
	if got := endpointSeries(t, c); len(got) != 1 || got[0] != cl.Addr(0) {
		t.Errorf("series after the calls finished: %v, want only %s", got, cl.Addr(0))
	}
	// And they stay gone: new traffic goes to the live endpoint only.
	for i := 0; i < 10; i++ {
		_, _, _ = push(c.Client, body)
	}
	if got := endpointSeries(t, c); len(got) != 1 || got[0] != cl.Addr(0) {
		t.Errorf("series after more traffic: %v", got)
	}
}

// endpointSeries lists the endpoints (not "none") with request series.
func endpointSeries(t *testing.T, c *testcaddy.Caddy) []string {
	t.Helper()
	seen := map[string]bool{}
	for _, line := range strings.Split(scrape(t, c), "\n") {
		if !strings.HasPrefix(line, "metrics_gateway_grpc_requests_total{") {
			continue
		}
		_, rest, _ := strings.Cut(line, `endpoint="`)
		ep, _, _ := strings.Cut(rest, `"`)
		if ep != "none" {
			seen[ep] = true
		}
	}
	out := make([]string, 0, len(seen))
	for ep := range seen {
		out = append(out, ep)
	}
	sort.Strings(out)
	return out
}

// TestGRPCCertificateRotation: mutual TLS between the gateway and dskit's
// server. After the client certificate files are rewritten (as cert-manager
// does) a forced reload of the same config connects anew with the new
// certificate; a forced reload with unchanged files keeps the connection.
func TestGRPCCertificateRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pki := testpki.New(t, "gateway")
	caFile := filepath.Join(dir, "ca.pem")
	certFile, keyFile := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	pki.WriteCert(t, caFile)
	pki.WriteClient(t, "gateway-v1", certFile, keyFile)

	var mu sync.Mutex
	var seen []string // client certificate CN of each call
	var conns atomic.Int64
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		if p, ok := peer.FromContext(ctx); ok {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
				mu.Lock()
				seen = append(seen, ti.State.PeerCertificates[0].Subject.CommonName)
				mu.Unlock()
			}
		}
		return next(ctx, req)
	}
	cl, err := standin.StartCluster(distributorName, 1,
		standin.WithTLS(&tls.Config{
			Certificates: []tls.Certificate{pki.Server(t, "distributor.mimir.test")},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pki.Pool(),
		}),
		standin.WithUnaryInterceptors(record),
		standin.WithServerOptions(grpc.StatsHandler(connsBegun{&conns})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Stop)
	handler := fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {
		"default": {"url": "http://127.0.0.1:1"},
		"distributor": {"url": %q, "grpc": {"tls": {"ca": %q, "cert": %q, "key": %q, "server_name": "distributor.mimir.test"}}}}}]`,
		cl.Target(), caFile, certFile, keyFile)
	c := testcaddy.Start(t, handler)
	body := standin.RemoteWriteBody(10, 1)
	lastCN := func() string {
		if resp, b, err := pushRetrying(c.Client, body, nil); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("push: %v %v %q", err, resp, b)
		}
		mu.Lock()
		defer mu.Unlock()
		return seen[len(seen)-1]
	}
	if cn := lastCN(); cn != "gateway-v1" {
		t.Fatalf("first certificate: %q", cn)
	}

	if err := c.ForceReload(handler); err != nil {
		t.Fatal(err)
	}
	if cn := lastCN(); cn != "gateway-v1" || conns.Load() != 1 {
		t.Fatalf("unchanged files: certificate %q, %d connections (want the one kept)", cn, conns.Load())
	}

	pki.WriteClient(t, "gateway-v2", certFile, keyFile)
	if err := c.ForceReload(handler); err != nil {
		t.Fatal(err)
	}
	if cn := lastCN(); cn != "gateway-v2" {
		t.Fatalf("after rotation the gateway presented %q, want the new certificate", cn)
	}
	if conns.Load() != 2 {
		t.Errorf("%d connections opened, want a second one for the new certificate", conns.Load())
	}
}

// connsBegun counts the connections a gRPC server accepted.
type connsBegun struct{ n *atomic.Int64 }

func (connsBegun) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (connsBegun) HandleRPC(context.Context, stats.RPCStats)                         {}
func (connsBegun) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (c connsBegun) HandleConn(_ context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnBegin); ok {
		c.n.Add(1)
	}
}
