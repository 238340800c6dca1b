package caddymodule_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
	"github.com/metrics-gateway/metrics_gateway/internal/testpki"
)

// TestGRPCPushOverH2TLS: remote-write clients that speak HTTP/2 over TLS
// (ALPN h2) to the gateway, streaming bodies without a Content-Length and
// many pushes at once on one connection, get every push to a distributor
// unchanged.
func TestGRPCPushOverH2TLS(t *testing.T) {
	t.Parallel()
	const pushes = 60
	cl := startCluster(t, 3)
	for _, d := range cl.Distributors {
		d.KeepRecords(pushes + 10)
	}
	ca := testpki.New(t, "gateway")
	c := startTLSGateway(t, cl, ca)
	client := &http.Client{Transport: h2Client(c, ca), Timeout: time.Minute}
	defer client.CloseIdleConnections()

	body := standin.RemoteWriteBody(2000, 1)
	sum := sha256.Sum256(body)
	var wg sync.WaitGroup
	errs := make(chan error, pushes)
	for i := 0; i < pushes; i++ {
		wg.Go(func() {
			errs <- pushStreamed(client, body)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var total int64
	counts := cl.Requests()
	for i, d := range cl.Distributors {
		total += counts[i]
		for _, r := range d.Records() {
			if r.BodySHA256 != sum || r.Tenant != "tenant-1" || r.Header.Get("Content-Encoding") != "snappy" {
				t.Fatalf("push arrived changed: %+v", r)
			}
		}
	}
	if total != pushes {
		t.Fatalf("distributors got %d pushes, want %d", total, pushes)
	}
}

// startTLSGateway runs the cluster's gateway on a TLS listener (unix socket)
// that offers h2 and http/1.1, with a certificate for gateway.test signed by
// ca.
func startTLSGateway(t *testing.T, cl *cluster, ca *testpki.CA) *testcaddy.Caddy {
	t.Helper()
	return testcaddy.StartJSON(t, func(c *testcaddy.Caddy) string {
		certFile, keyFile := filepath.Join(c.Dir, "gw.crt"), filepath.Join(c.Dir, "gw.key")
		ca.WriteServer(t, "gateway.test", certFile, keyFile)
		return fmt.Sprintf(`{
			"admin": {"listen": "unix/%s", "config": {"persist": false}},
			"logging": {"logs": {"default": {"level": "WARN"}}},
			"apps": {
				"tls": {"certificates": {"load_files": [{"certificate": %q, "key": %q}]}},
				"http": {"servers": {"gateway": {
					"listen": ["unix/%s"],
					"protocols": ["h1", "h2"],
					"automatic_https": {"disable": true},
					"tls_connection_policies": [{}],
					"routes": [{"handle": %s}]
				}}}
			}
		}`, c.AdminSock, certFile, keyFile, c.HTTPSock, cl.handlerJSON(""))
	})
}

// h2Client is an HTTP/2-only client that dials the gateway's socket, checks
// its certificate against ca and insists on ALPN h2.
func h2Client(c *testcaddy.Caddy, ca *testpki.CA) *http2.Transport {
	return &http2.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "gateway.test", NextProtos: []string{"h2"}},
		DialTLSContext: func(ctx context.Context, _, _ string, cfg *tls.Config) (net.Conn, error) {
			raw, err := (&net.Dialer{}).DialContext(ctx, "unix", c.HTTPSock)
			if err != nil {
				return nil, err
			}
			conn := tls.Client(raw, cfg)
			if err := conn.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
				conn.Close()
				return nil, fmt.Errorf("ALPN negotiated %q, want h2", p)
			}
			return conn, nil
		},
	}
}

// pushStreamed pushes body as a stream of unknown length (no
// Content-Length: HTTP/2 DATA frames until END_STREAM) and wants 200 over
// HTTP/2.
func pushStreamed(client *http.Client, body []byte) error {
	pr, pw := io.Pipe()
	go func() {
		// In pieces, as a client writing while it encodes.
		for off := 0; off < len(body); off += 7000 {
			if _, err := pw.Write(body[off:min(off+7000, len(body))]); err != nil {
				return
			}
		}
		pw.Close()
	}()
	// A pipe has no length: the transport sends no content-length.
	req, err := http.NewRequest(http.MethodPost, "https://gateway.test/api/v1/push", pr)
	if err != nil {
		return err
	}
	standin.SetPushHeaders(req.Header, "tenant-1")
	resp, err := client.Do(req)
	if err != nil {
		pr.CloseWithError(err)
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		return fmt.Errorf("push: %s over %s: %s", resp.Status, resp.Proto, b)
	}
	return nil
}
