package grpcpush

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grafana/dskit/httpgrpc"
)

// FuzzWriteResponse relays arbitrary tunnelled responses (any final code,
// any header names and values, any body) through writeResponse on a real
// net/http server to a real client on one keep-alive connection. The client
// must get the code and the body exactly, no header the response did not
// carry (no response splitting), and the connection must stay usable.
func FuzzWriteResponse(f *testing.F) {
	var responses sync.Map // request number → *httpgrpc.HTTPResponse
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, ok := responses.Load(r.URL.Path)
		if !ok {
			http.Error(w, "unknown", http.StatusNotFound)
			return
		}
		writeResponse(w, v.(*httpgrpc.HTTPResponse), false)
	}))
	f.Cleanup(srv.Close)
	tr := &http.Transport{MaxConnsPerHost: 1, DisableCompression: true}
	f.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var n atomic.Int64

	f.Add(int32(200), "Content-Type: application/json\nX-Prometheus-Remote-Write-Samples-Written: 10", []byte("{}"), false)
	f.Add(int32(429), "Retry-After: 3", []byte("slow down"), false)
	f.Add(int32(204), "", []byte("no body allowed"), false)
	f.Add(int32(200), "Content-Length: +5", []byte("hello"), false) // a sign: Go's client refuses it
	f.Add(int32(304), "ETag: x", []byte("nope"), false)
	f.Add(int32(200), "Content-Length: 3", []byte("hello world"), false)
	f.Add(int32(200), "Content-Length: 30", []byte("short"), false)
	f.Add(int32(200), "Transfer-Encoding: chunked\nConnection: close", []byte("x"), false)
	f.Add(int32(200), "X-A: a\r\nX-Injected: 1", []byte("x"), false)
	f.Add(int32(200), "X-A\r\nX-Injected: 1: a", []byte("x"), false)
	f.Add(int32(200), "X-Nul: a\x00b", []byte("x"), false)
	f.Add(int32(500), "X-Obs: \xff\xfe", []byte("x"), true)
	f.Fuzz(func(t *testing.T, code int32, headerLines string, body []byte, head bool) {
		if len(headerLines) > 16<<10 || len(body) > 1<<20 {
			return
		}
		if !validStatus(int(code)) { // serve answers 502 before writeResponse
			return
		}
		resp := &httpgrpc.HTTPResponse{Code: code, Body: body}
		sent := map[string]bool{}
		for i, line := range strings.Split(headerLines, "\n") {
			if i == 64 {
				break
			}
			k, v, _ := strings.Cut(line, ":")
			resp.Headers = append(resp.Headers, &httpgrpc.Header{Key: k, Values: []string{strings.TrimSpace(v)}})
			sent[http.CanonicalHeaderKey(k)] = true
		}
		path := "/" + strconv.FormatInt(n.Add(1), 10)
		responses.Store(path, resp)
		defer responses.Delete(path)
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		got, err := client.Do(req)
		if err != nil {
			t.Fatalf("code %d, headers %q: %v", code, headerLines, err)
		}
		gotBody, err := io.ReadAll(got.Body)
		got.Body.Close()
		if err != nil {
			t.Fatalf("code %d, headers %q: reading body: %v", code, headerLines, err)
		}
		if got.StatusCode != int(code) {
			t.Fatalf("headers %q: status %d, want %d", headerLines, got.StatusCode, code)
		}
		want := body
		if head || code == http.StatusNoContent || code == http.StatusNotModified {
			want = nil
		}
		if !bytes.Equal(gotBody, want) {
			t.Fatalf("code %d, headers %q: body %q, want %q", code, headerLines, gotBody, want)
		}
		for k := range got.Header {
			switch k {
			case "Date", "Content-Length", "Content-Type", "Connection":
				continue
			}
			if !sent[k] {
				t.Fatalf("code %d, headers %q: client got header %q that the response did not carry", code, headerLines, k)
			}
		}
	})
}
