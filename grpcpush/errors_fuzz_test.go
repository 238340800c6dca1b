package grpcpush

import (
	"net/http"
	"testing"

	"github.com/grafana/dskit/httpgrpc"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzMapError maps arbitrary gRPC statuses (any code, message and details,
// including malformed httpgrpc.HTTPResponse and cortexpb.ErrorDetails
// payloads) to HTTP. Whatever a component or a broken peer sends, the client
// gets a final HTTP status (200-599; 499 only for a cancelled call or a
// component's own 499), and a tunnelled response is relayed only if its own
// code is one.
func FuzzMapError(f *testing.F) {
	valid, _ := (&httpgrpc.HTTPResponse{Code: 429, Body: []byte("slow down"),
		Headers: []*httpgrpc.Header{{Key: "Retry-After", Values: []string{"3"}}}}).Marshal()
	informational, _ := (&httpgrpc.HTTPResponse{Code: 100}).Marshal()
	f.Add(uint32(codes.Unavailable), "connection refused", uint8(0), []byte(nil), uint8(0), []byte(nil))
	f.Add(uint32(429), "", uint8(1), valid, uint8(0), []byte(nil))
	f.Add(uint32(codes.Internal), "x", uint8(1), informational, uint8(2), []byte{0x08, 0x04})
	f.Add(uint32(codes.Internal), "x", uint8(2), []byte{0x08, 0x0d}, uint8(0), []byte(nil))
	f.Add(uint32(codes.Internal), "x", uint8(2), []byte{0x08, 0xff, 0xff, 0xff, 0xff, 0x0f}, uint8(0), []byte(nil))
	f.Add(uint32(codes.Unknown), "no org id", uint8(0), []byte(nil), uint8(0), []byte(nil))
	f.Add(uint32(codes.ResourceExhausted), "grpc: received message larger than max", uint8(0), []byte(nil), uint8(0), []byte(nil))
	f.Add(uint32(150), "", uint8(0), []byte(nil), uint8(0), []byte(nil))
	f.Add(uint32(0xffffffff), "", uint8(3), []byte{0xff}, uint8(1), []byte{0x0a})
	f.Fuzz(func(t *testing.T, code uint32, msg string, kind1 uint8, value1 []byte, kind2 uint8, value2 []byte) {
		if len(msg)+len(value1)+len(value2) > 64<<10 {
			return
		}
		p := &spb.Status{Code: int32(code), Message: msg}
		for _, d := range []struct {
			kind  uint8
			value []byte
		}{{kind1, value1}, {kind2, value2}} {
			if url := detailTypeURL(d.kind); url != "" {
				p.Details = append(p.Details, &anypb.Any{TypeUrl: url, Value: d.value})
			}
		}
		o := mapError(status.ErrorProto(p))
		if o.resp != nil {
			if !validStatus(int(o.resp.Code)) {
				t.Fatalf("relays a tunnelled response with code %d", o.resp.Code)
			}
			return
		}
		switch {
		case o.code == StatusClientClosedRequest:
			// Canceled, or a component's own 499 relayed as its number.
			if o.grpcCode != codes.Canceled && code != StatusClientClosedRequest {
				t.Fatalf("499 for %v", o.grpcCode)
			}
		case !validStatus(o.code):
			t.Fatalf("status %d for code %d %q", o.code, code, msg)
		case codes.Code(code) == codes.Unavailable && len(p.Details) == 0 && o.code != http.StatusServiceUnavailable:
			t.Fatalf("UNAVAILABLE without details → %d, want 503", o.code)
		case codes.Code(code) == codes.DeadlineExceeded && len(p.Details) == 0 && o.code != http.StatusGatewayTimeout:
			t.Fatalf("DEADLINE_EXCEEDED without details → %d, want 504", o.code)
		}
	})
}

// detailTypeURL picks a detail's type: none, the two Mimir details, or an
// unknown one.
func detailTypeURL(kind uint8) string {
	switch kind % 4 {
	case 1:
		return httpResponseTypeURL
	case 2:
		return errorDetailsTypeURL
	case 3:
		return "type.googleapis.com/google.rpc.DebugInfo"
	}
	return ""
}
