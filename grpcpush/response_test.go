package grpcpush

import (
	"io"
	"net/http"
	"strconv"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// TestMalformedComponentResponse: a component (dskit's httpgrpc server)
// answers with a Content-Length that does not match its body and with a
// header value holding a NUL. Relayed verbatim, the first truncates or
// stalls the client and the second makes it drop the response as
// malformed; the client gets the status and the whole body, without the
// broken header, and its connection stays usable (found by
// FuzzWriteResponse).
func TestMalformedComponentResponse(t *testing.T) {
	cl := startCluster(t, 1)
	body := "answer of the component"
	for name, hdr := range map[string][2]string{
		"short Content-Length":  {"Content-Length", "3"},
		"long Content-Length":   {"Content-Length", "300"},
		"signed Content-Length": {"Content-Length", "+" + strconv.Itoa(len(body))}, // Go's client refuses it
		"NUL in a value":        {"X-Broken", "a\x00b"},
		"control character":     {"X-Broken", "a\x01b"},
	} {
		t.Run(name, func(t *testing.T) {
			cl.Distributors[0].SetBehavior(func(w http.ResponseWriter, _ *http.Request) bool {
				w.Header()["X-Kept"] = []string{"yes"}
				w.Header()[hdr[0]] = []string{hdr[1]}
				w.WriteHeader(http.StatusAccepted)
				_, _ = io.WriteString(w, body)
				return true
			})
			h := newHandler(t, cl, Options{})
			client := oneConnClient(t)
			srv := frontend(t, h)
			for i := 0; i < 2; i++ { // the second on the same connection
				code, got, b, err := post(client, srv.URL, standin.RemoteWriteBody(1, 1))
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if code != http.StatusAccepted || string(b) != body || got.Get("X-Kept") != "yes" {
					t.Fatalf("request %d: %d %q, X-Kept %q; want 202 %q", i, code, b, got.Get("X-Kept"), body)
				}
				if hdr[0] == "X-Broken" && got["X-Broken"] != nil {
					t.Fatalf("malformed header relayed: %q", got["X-Broken"])
				}
			}
		})
	}
}

// TestMaxResponseBodyExact: an answer one byte over max_response_body is
// the backend's failure (502), though gRPC's own limit leaves room for the
// message around it; an error answer, which travels outside that limit,
// keeps its status with its body cut to the limit.
func TestMaxResponseBodyExact(t *testing.T) {
	const limit = 4096
	cl := startCluster(t, 1)
	cl.Distributors[0].SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Query().Get("error") != "" {
			w.WriteHeader(http.StatusUnprocessableEntity)
			_, _ = w.Write(make([]byte, 512<<10))
			return true
		}
		_, _ = w.Write(make([]byte, limit+1))
		return true
	})
	h := newHandler(t, cl, Options{MaxResponseBody: limit})
	r := pushRequest([]byte("x"))
	r.Method, r.RequestURI = http.MethodGet, "/prometheus/api/v1/query?query=up"
	if w := serve(h, r); w.Code != http.StatusBadGateway {
		t.Errorf("an answer of %d bytes over a %d-byte limit: %d, want 502", limit+1, limit, w.Code)
	}
	r = pushRequest([]byte("x"))
	r.Method, r.RequestURI = http.MethodGet, "/prometheus/api/v1/query?query=up&error=1"
	if w := serve(h, r); w.Code != http.StatusUnprocessableEntity || w.Body.Len() != limit {
		t.Errorf("a 422 of 512 KiB: %d with %d bytes, want 422 with %d", w.Code, w.Body.Len(), limit)
	}
}
