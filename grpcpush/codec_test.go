package grpcpush

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/grafana/dskit/httpgrpc"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// TestCodecMatchesDskit proves the zero-copy encoding is byte-identical to
// dskit's generated HTTPRequest.Marshal, for the in-headroom layout, the
// separate-prefix layout (huge headers) and an empty body.
func TestCodecMatchesDskit(t *testing.T) {
	cases := map[string]struct {
		body    []byte
		headers int // extra headers of 100 bytes each
		buffers int // expected buffers in the encoded message
	}{
		"push in headroom":   {standin.RemoteWriteBody(2000, 1), 0, 1},
		"huge headers":       {standin.RemoteWriteBody(10, 1), 40, 2},
		"empty body":         {nil, 0, 1},
		"empty huge headers": {nil, 40, 1},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			r := pushRequest(tc.body)
			r.URL.RawQuery = "a=1&b=2"
			r.RequestURI = "/api/v1/push?a=1&b=2"
			for i := 0; i < tc.headers; i++ {
				r.Header.Set("X-Big-"+strings.Repeat("k", 3)+string(rune('a'+i%26))+string(rune('a'+i/26)), strings.Repeat("v", 100))
			}
			budget := NewBudget(1<<20, nil, "")
			buf, n, err := readBody(r.Body, r.ContentLength, 1<<20, budget)
			if err != nil {
				t.Fatal(err)
			}
			c := getCall()
			c.site = &site{budget: budget}
			c.setBody(buf, n)
			c.setRequest(r, nil)

			out, err := tunnelCodec{}.Marshal(&c.req)
			if err != nil {
				t.Fatal(err)
			}
			if len(out) != tc.buffers {
				t.Errorf("encoded into %d buffers, want %d", len(out), tc.buffers)
			}
			got := out.Materialize()

			want := httpgrpc.HTTPRequest{Method: c.req.msg.Method, Url: c.req.msg.Url, Headers: c.req.msg.Headers, Body: tc.body}
			wantBytes, err := want.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, wantBytes) {
				t.Fatalf("encoding differs from dskit's: %d vs %d bytes", len(got), len(wantBytes))
			}
			var back httpgrpc.HTTPRequest
			if err := back.Unmarshal(got); err != nil {
				t.Fatal(err)
			}
			if back.Url != "/api/v1/push?a=1&b=2" || back.Method != "POST" || !bytes.Equal(back.Body, tc.body) {
				t.Errorf("decoded %s %s with %d body bytes", back.Method, back.Url, len(back.Body))
			}
			out.Free()
			c.releaseBody()
			putCall(c)
			if used := budget.Used(); used != 0 {
				t.Errorf("%d bytes still counted once gRPC and the call let go of the buffer", used)
			}
		})
	}
}

// TestCodecUnmarshal decodes a multi-buffer response with dskit's code.
func TestCodecUnmarshal(t *testing.T) {
	resp := httpgrpc.HTTPResponse{Code: 204, Headers: []*httpgrpc.Header{{Key: "X-A", Values: []string{"1", "2"}}}, Body: []byte("hello")}
	b, _ := resp.Marshal()
	for _, split := range []int{len(b), 3} {
		var got httpgrpc.HTTPResponse
		data := sliceOf(b[:split], b[split:])
		if err := (tunnelCodec{}).Unmarshal(data, &got); err != nil {
			t.Fatal(err)
		}
		if !got.Equal(&resp) {
			t.Errorf("split %d: got %v, want %v", split, got, resp)
		}
	}
}

func TestWriteResponseDropsHopByHop(t *testing.T) {
	w := httptest.NewRecorder()
	code := writeResponse(w, &httpgrpc.HTTPResponse{Code: 202, Body: []byte("ok"), Headers: []*httpgrpc.Header{
		{Key: "Connection", Values: []string{"close"}},
		{Key: "Keep-Alive", Values: []string{"timeout=5"}},
		{Key: "Transfer-Encoding", Values: []string{"chunked"}},
		{Key: "x-custom", Values: []string{"a", "b"}},
	}}, false)
	if code != 202 || w.Code != 202 || w.Body.String() != "ok" {
		t.Fatalf("got %d %d %q", code, w.Code, w.Body.String())
	}
	h := w.Result().Header
	for _, k := range []string{"Connection", "Keep-Alive", "Transfer-Encoding"} {
		if _, ok := h[k]; ok {
			t.Errorf("hop-by-hop %s copied", k)
		}
	}
	if got := h["X-Custom"]; len(got) != 2 || got[1] != "b" {
		t.Errorf("X-Custom = %v", got)
	}
}
