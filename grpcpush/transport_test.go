package grpcpush

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/examples/standin"
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
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA " + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{name}, IPAddresses: []net.IP{net.ParseIP(standin.GroupIP(0))},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
