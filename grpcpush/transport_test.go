package grpcpush

import (
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testpki"
)

// TestTLS: with the CA and server name the push works; with the wrong CA it
// fails with 503 and no call reaches the handler.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	caFile, serverCert := testPKI(t, dir, "distributor.mimir.test")
	c := startCluster(t, 1, standin.WithTLS(&tls.Config{Certificates: []tls.Certificate{serverCert}}))
	h := newHandler(t, c, Options{TLS: &TLSOptions{CAFile: caFile, ServerName: "distributor.mimir.test"}})
	if w := serve(h, pushRequest(standin.RemoteWriteBody(10, 1))); w.Code != http.StatusOK {
		t.Fatalf("TLS push: %d %s", w.Code, w.Body)
	}

	otherCA, _ := testPKI(t, t.TempDir(), "other")
	bad := newHandler(t, c, Options{TLS: &TLSOptions{CAFile: otherCA, ServerName: "distributor.mimir.test"}, Timeout: 20 * time.Second})
	if w := serve(bad, pushRequest(standin.RemoteWriteBody(10, 1))); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("wrong CA: %d %s", w.Code, w.Body)
	}
	if c.Distributors[0].Requests() != 1 {
		t.Fatalf("%d requests reached the distributor", c.Distributors[0].Requests())
	}
	if _, err := New(Options{Target: c.Target(), TLS: &TLSOptions{CAFile: filepath.Join(dir, "missing.pem")}}); err == nil || !strings.Contains(err.Error(), "tls ca") {
		t.Errorf("missing CA file: %v", err)
	}
}

// TestGzip: with compression the push still arrives intact.
func TestGzip(t *testing.T) {
	c := startCluster(t, 1)
	h := newHandler(t, c, Options{Compression: "gzip"})
	if w := serve(h, pushRequest(standin.RemoteWriteBody(2000, 1))); w.Code != http.StatusOK {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if c.Distributors[0].Samples() != 2000 {
		t.Fatalf("%d samples", c.Distributors[0].Samples())
	}
}

// testPKI writes a CA to dir and returns its file and a server certificate
// for name (and 127.0.0.2) signed by it.
func testPKI(t *testing.T, dir, name string) (string, tls.Certificate) {
	t.Helper()
	ca := testpki.New(t, name)
	caFile := filepath.Join(dir, "ca.pem")
	ca.WriteCert(t, caFile)
	return caFile, ca.Server(t, name)
}
