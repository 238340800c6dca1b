package grpcpush

import (
	"net/http"
	"strings"

	"github.com/grafana/dskit/httpgrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// StatusClientClosedRequest is the (nginx) status recorded for a request whose
// client went away before the answer; nothing is written to that client.
const StatusClientClosedRequest = 499

// Type URLs of the error details a Mimir or Cortex component attaches.
const (
	httpResponseTypeURL = "type.googleapis.com/httpgrpc.HTTPResponse"
	errorDetailsTypeURL = "type.googleapis.com/cortexpb.ErrorDetails"
)

// Mimir's cortexpb.ErrorCause values (pkg/mimirpb/mimir.proto, enum
// ErrorCause). They are wire values that Mimir cannot renumber.
const (
	causeReplicasDidNotMatch  = 1
	causeTooManyClusters      = 2
	causeBadData              = 3
	causeIngestionRateLimited = 4
	causeRequestRateLimited   = 5
	causeInstanceLimit        = 6
	causeTSDBUnavailable      = 8
	causeCircuitBreakerOpen   = 10
	causeMethodNotAllowed     = 11
	causeTenantLimit          = 12
	causeActiveSeriesLimited  = 13
)

// causeStatus maps an ErrorCause to the HTTP status Mimir's distributor
// itself answers over HTTP; causes not listed are 500.
var causeStatus = map[int32]int{
	causeBadData:              http.StatusBadRequest,
	causeTenantLimit:          http.StatusBadRequest,
	causeTooManyClusters:      http.StatusBadRequest,
	causeIngestionRateLimited: http.StatusTooManyRequests,
	causeRequestRateLimited:   http.StatusTooManyRequests,
	causeActiveSeriesLimited:  http.StatusTooManyRequests,
	causeReplicasDidNotMatch:  http.StatusAccepted,
	causeCircuitBreakerOpen:   http.StatusServiceUnavailable,
	causeInstanceLimit:        http.StatusServiceUnavailable,
	causeTSDBUnavailable:      http.StatusServiceUnavailable,
	causeMethodNotAllowed:     http.StatusNotImplemented,
}

// codeStatus maps the remaining gRPC codes; codes not listed are 500.
var codeStatus = map[codes.Code]int{
	codes.InvalidArgument:    http.StatusBadRequest,
	codes.FailedPrecondition: http.StatusBadRequest,
	codes.OutOfRange:         http.StatusBadRequest,
	codes.Unauthenticated:    http.StatusUnauthorized,
	codes.PermissionDenied:   http.StatusForbidden,
	codes.NotFound:           http.StatusNotFound,
	codes.Unimplemented:      http.StatusNotImplemented,
	codes.AlreadyExists:      http.StatusConflict,
}

// outcome is what the client gets for a failed call: either resp verbatim
// (the component's own HTTP answer) or a gateway-made answer code + msg.
type outcome struct {
	resp     *httpgrpc.HTTPResponse
	code     int
	msg      string
	grpcCode codes.Code
}

// mapError turns a call error into what the HTTP client gets, following the
// table of the package documentation in its order: an HTTPResponse detail,
// then an ErrorDetails cause, then an HTTP code number, then gRPC codes.
func mapError(err error) outcome {
	st, _ := status.FromError(err)
	details := st.Proto().GetDetails()
	for _, d := range details {
		if d.GetTypeUrl() != httpResponseTypeURL {
			continue
		}
		var resp httpgrpc.HTTPResponse
		if resp.Unmarshal(d.GetValue()) == nil && validStatus(int(resp.Code)) {
			return outcome{resp: &resp}
		}
	}
	for _, d := range details {
		if d.GetTypeUrl() == errorDetailsTypeURL {
			return outcome{code: statusForCause(decodeCause(d.GetValue())), msg: st.Message(), grpcCode: st.Code()}
		}
	}
	return outcome{code: statusForCode(st.Code(), st.Message()), msg: st.Message(), grpcCode: st.Code()}
}

// statusForCause maps an ErrorCause to an HTTP status.
func statusForCause(cause int32) int {
	if s, ok := causeStatus[cause]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// statusForCode maps a status without usable details to an HTTP status.
func statusForCode(c codes.Code, msg string) int {
	switch {
	case c >= 200 && c <= 599: // Cortex/Mimir put HTTP statuses in the code
		return int(c)
	case c >= 100 && c < 200: // not a final HTTP status: cannot be relayed
		return http.StatusBadGateway
	case c == codes.Unavailable:
		return http.StatusServiceUnavailable
	case c == codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case c == codes.Canceled:
		return StatusClientClosedRequest
	case c == codes.ResourceExhausted && strings.Contains(msg, "larger than max"):
		return http.StatusRequestEntityTooLarge
	case c == codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case c == codes.Unknown && strings.Contains(msg, "no org id"):
		return http.StatusUnauthorized
	}
	if s, ok := codeStatus[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// decodeCause reads field 1 (Cause, an enum varint) of a gogo-encoded
// cortexpb.ErrorDetails. Unknown fields are skipped; a malformed message
// yields cause 0 (unknown, so 500).
func decodeCause(b []byte) int32 {
	var cause int32
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return 0
			}
			cause = int32(v)
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0
		}
		b = b[m:]
	}
	return cause
}

// validStatus reports whether code can be written as a final HTTP status
// (a 1xx written by a handler is sent as an interim response, not as the
// answer).
func validStatus(code int) bool { return code >= 200 && code <= 599 }
