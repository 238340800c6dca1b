// Package testpki is a throw-away certificate authority for tests: it signs
// server and client certificates for loopback names, valid for an hour.
package testpki

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
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// CA signs certificates; each one gets a new serial number.
type CA struct {
	key    *ecdsa.PrivateKey
	cert   *x509.Certificate
	der    []byte
	serial atomic.Int64
}

// New creates a CA named "test CA <name>".
func New(t testing.TB, name string) *CA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA " + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{key: key, cert: cert, der: der}
	ca.serial.Store(1)
	return ca
}

// Pool is a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return pool
}

// WriteCert writes the CA's certificate to file as PEM.
func (ca *CA) WriteCert(t testing.TB, file string) {
	writePEM(t, file, "CERTIFICATE", ca.der)
}

// Server is a server certificate for name and the first stand-in address.
func (ca *CA) Server(t testing.TB, name string) tls.Certificate {
	der, key := ca.sign(t, name, x509.ExtKeyUsageServerAuth)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// WriteClient writes a new client certificate and key for cn.
func (ca *CA) WriteClient(t testing.TB, cn, certFile, keyFile string) {
	ca.writePair(t, cn, x509.ExtKeyUsageClientAuth, certFile, keyFile)
}

// WriteServer writes a new server certificate and key for name, for a
// server that loads them from files (Caddy's tls load_files).
func (ca *CA) WriteServer(t testing.TB, name, certFile, keyFile string) {
	ca.writePair(t, name, x509.ExtKeyUsageServerAuth, certFile, keyFile)
}

func (ca *CA) writePair(t testing.TB, cn string, usage x509.ExtKeyUsage, certFile, keyFile string) {
	t.Helper()
	der, key := ca.sign(t, cn, usage)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
}

func (ca *CA) sign(t testing.TB, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{cn}, IPAddresses: []net.IP{net.ParseIP(standin.GroupIP(0))},
		ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func writePEM(t testing.TB, file, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
