package standin

import (
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
)

// ErrorDetailsTypeURL is the type URL of Mimir's cortexpb.ErrorDetails.
const ErrorDetailsTypeURL = "type.googleapis.com/cortexpb.ErrorDetails"

// Values of Mimir's cortexpb.ErrorCause enum, as declared in Mimir's
// pkg/mimirpb/mimir.proto (enum ErrorCause). They are wire values: Mimir must
// never renumber them, so copying the numbers is safe.
const (
	CauseUnknown              int32 = 0
	CauseReplicasDidNotMatch  int32 = 1
	CauseTooManyClusters      int32 = 2
	CauseBadData              int32 = 3
	CauseIngestionRateLimited int32 = 4
	CauseRequestRateLimited   int32 = 5
	CauseInstanceLimit        int32 = 6
	CauseServiceUnavailable   int32 = 7
	CauseTSDBUnavailable      int32 = 8
	CauseTooBusy              int32 = 9
	CauseCircuitBreakerOpen   int32 = 10
	CauseMethodNotAllowed     int32 = 11
	CauseTenantLimit          int32 = 12
	CauseActiveSeriesLimited  int32 = 13
)

// ErrorDetailsStatus returns a gRPC status error like the ones Mimir's
// ingestion path returns: the given code and message plus one detail, a
// cortexpb.ErrorDetails{Cause = 1 (enum)} encoded by hand. Return it from a
// server interceptor (WithUnaryInterceptors).
func ErrorDetailsStatus(code codes.Code, cause int32, msg string) error {
	var v []byte
	if cause != 0 { // proto3 omits zero values
		v = protowire.AppendTag(v, 1, protowire.VarintType)
		v = protowire.AppendVarint(v, uint64(int64(cause)))
	}
	return status.ErrorProto(&spb.Status{
		Code:    int32(code),
		Message: msg,
		Details: []*anypb.Any{{TypeUrl: ErrorDetailsTypeURL, Value: v}},
	})
}
