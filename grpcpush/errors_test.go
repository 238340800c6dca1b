package grpcpush

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/grafana/dskit/httpgrpc"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errorInterceptor answers calls to /raw/..., /cause/... and /both itself,
// the way Mimir and Cortex components fail below their HTTP handlers:
//
//	/raw/<code>/<message>  status.Error(code, message), no details
//	/cause/<n>             ErrorDetailsStatus(Internal, n, ...)
//	/cause/<n>/unavailable the same with code Unavailable (retried, then mapped by cause)
//	/both                  an HTTPResponse detail AND an ErrorDetails detail
func errorInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	r, ok := req.(*httpgrpc.HTTPRequest)
	if !ok {
		return next(ctx, req)
	}
	parts := strings.SplitN(strings.TrimPrefix(r.Url, "/"), "/", 3)
	switch parts[0] {
	case "raw":
		n, _ := strconv.Atoi(parts[1])
		return nil, status.Error(codes.Code(n), parts[2])
	case "cause":
		n, _ := strconv.Atoi(parts[1])
		code := codes.Internal
		if len(parts) == 3 {
			code = codes.Unavailable
		}
		return nil, standin.ErrorDetailsStatus(code, int32(n), "cause "+parts[1])
	case "both":
		st := status.Convert(httpErr(429, "slow down", map[string]string{"Retry-After": "9"}))
		with, _ := st.WithDetails() // keep the HTTPResponse detail, add ErrorDetails below
		p := with.Proto()
		ed := status.Convert(standin.ErrorDetailsStatus(codes.Internal, standin.CauseBadData, "x")).Proto().Details[0]
		p.Details = append(p.Details, ed)
		return nil, status.ErrorProto(p)
	}
	return next(ctx, req)
}

// distributorAnswers makes the stand-in answer /http/<code> with that code,
// a Retry-After of 7 and a body naming the code.
func distributorAnswers(w http.ResponseWriter, r *http.Request) bool {
	code, ok := strings.CutPrefix(r.URL.Path, "/http/")
	if !ok {
		return false
	}
	n, _ := strconv.Atoi(code)
	w.Header().Set("Retry-After", "7")
	w.Header().Set("X-From", "distributor")
	w.WriteHeader(n)
	_, _ = w.Write([]byte("distributor says " + code))
	return true
}

// TestErrorTable goes through every row of the error mapping, end to end
// through dskit's httpgrpc server.
func TestErrorTable(t *testing.T) {
	c := startCluster(t, 1, standin.WithUnaryInterceptors(errorInterceptor))
	c.Distributors[0].SetBehavior(distributorAnswers)
	h := newHandler(t, c, Options{Retries: Ptr(1)})
	waitReady(t, h, 1)

	type row struct {
		path       string
		code       int
		body       string // substring of the body
		retryAfter string
	}
	rows := []row{
		// The component's own HTTP answers, verbatim (2xx as responses, 4xx
		// and 5xx as errors carrying the HTTPResponse).
		{"/http/200", 200, "distributor says 200", "7"},
		{"/http/202", 202, "distributor says 202", "7"},
		{"/http/400", 400, "distributor says 400", "7"},
		{"/http/429", 429, "distributor says 429", "7"},
		{"/http/500", 500, "distributor says 500", "7"},
		{"/http/503", 503, "distributor says 503", "7"},
		{"/both", 429, "slow down", "9"},
		// cortexpb.ErrorDetails, by cause.
		{"/cause/" + itoa(standin.CauseBadData), 400, "cause 3", ""},
		{"/cause/" + itoa(standin.CauseTenantLimit), 400, "cause 12", ""},
		{"/cause/" + itoa(standin.CauseTooManyClusters), 400, "cause 2", ""},
		{"/cause/" + itoa(standin.CauseIngestionRateLimited), 429, "cause 4", gw},
		{"/cause/" + itoa(standin.CauseRequestRateLimited), 429, "cause 5", gw},
		{"/cause/" + itoa(standin.CauseActiveSeriesLimited), 429, "cause 13", gw},
		{"/cause/" + itoa(standin.CauseReplicasDidNotMatch), 202, "cause 1", ""},
		{"/cause/" + itoa(standin.CauseCircuitBreakerOpen), 503, "cause 10", gw},
		{"/cause/" + itoa(standin.CauseInstanceLimit), 503, "cause 6", gw},
		{"/cause/" + itoa(standin.CauseTSDBUnavailable), 503, "cause 8", gw},
		{"/cause/" + itoa(standin.CauseTSDBUnavailable) + "/unavailable", 503, "cause 8", gw},
		{"/cause/" + itoa(standin.CauseMethodNotAllowed), 501, "cause 11", ""},
		{"/cause/" + itoa(standin.CauseUnknown), 500, "cause 0", ""},
		{"/cause/" + itoa(standin.CauseServiceUnavailable), 500, "cause 7", ""},
		{"/cause/" + itoa(standin.CauseTooBusy), 500, "cause 9", ""},
		{"/cause/99", 500, "cause 99", ""},
		// HTTP status numbers as codes, without details (Cortex).
		{"/raw/400/bad sample", 400, "bad sample", ""},
		{"/raw/429/ingestion rate limit", 429, "ingestion rate limit", gw},
		{"/raw/503/ingester unavailable", 503, "ingester unavailable", gw},
		{"/raw/599/odd", 599, "odd", ""},
		{"/raw/100/continue", 502, "continue", ""},
		// gRPC codes.
		{"/raw/14/connection reset", 503, "unavailable: max retries exhausted: failed after 2 attempts", gw},
		{"/raw/4/deadline", 504, "no answer within", ""},
		{"/raw/1/canceled by server", 503, "canceled on the way to the endpoint: canceled by server", gw},
		{"/raw/8/grpc: received message larger than max (200 vs. 100)", 413, "larger than max", ""},
		{"/raw/8/too many inflight pushes", 429, "too many inflight pushes", gw},
		{"/raw/2/no org id", 401, "no org id", ""},
		{"/raw/2/something else", 500, "something else", ""},
		{"/raw/3/invalid", 400, "invalid", ""},
		{"/raw/9/precondition", 400, "precondition", ""},
		{"/raw/11/out of range", 400, "out of range", ""},
		{"/raw/16/who are you", 401, "who are you", ""},
		{"/raw/7/denied", 403, "denied", ""},
		{"/raw/5/not found", 404, "not found", ""},
		{"/raw/12/unimplemented", 501, "unimplemented", ""},
		{"/raw/6/exists", 409, "exists", ""},
		{"/raw/13/internal", 500, "internal", ""},
		{"/raw/10/aborted", 500, "aborted", ""},
		{"/raw/15/data loss", 500, "data loss", ""},
	}
	for _, tc := range rows {
		r := pushRequest([]byte("x"))
		r.RequestURI = tc.path
		w := serve(h, r)
		if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.body) || !retryAfterIs(w.Header().Get("Retry-After"), tc.retryAfter) {
			t.Errorf("%s: got %d %q Retry-After %q, want %d %q Retry-After %q",
				tc.path, w.Code, w.Body, w.Header().Get("Retry-After"), tc.code, tc.body, tc.retryAfter)
		}
		if b := w.Body.String(); strings.Count(b, "\n") > 1 {
			t.Errorf("%s: body is not one line: %q", tc.path, b)
		}
		if strings.HasPrefix(tc.path, "/http/") && w.Header().Get("X-From") != "distributor" {
			t.Errorf("%s: distributor headers lost: %v", tc.path, w.Header())
		}
		if !strings.HasPrefix(tc.path, "/http/") && tc.path != "/both" &&
			!strings.HasPrefix(w.Body.String(), DefaultBackendName+" "+c.Addr(0)+": ") {
			t.Errorf("%s: gateway-made body does not say where it failed: %q", tc.path, w.Body)
		}
	}
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

// gw stands for the gateway's own Retry-After of a first attempt: Mimir's
// 6s ±50 %, kept at or above 6s.
const gw = "6-9"

// retryAfterIs reports whether a Retry-After value is want, or in the
// range want names ("6-9").
func retryAfterIs(got, want string) bool {
	lo, hi, isRange := strings.Cut(want, "-")
	if !isRange {
		return got == want
	}
	n, err := strconv.Atoi(got)
	a, _ := strconv.Atoi(lo)
	b, _ := strconv.Atoi(hi)
	return err == nil && n >= a && n <= b
}

// TestMessageLargerThanServerMax: the server's own receive limit answers
// ResourceExhausted "larger than max", which becomes 413.
func TestMessageLargerThanServerMax(t *testing.T) {
	c := startCluster(t, 1, standin.WithServerOptions(grpc.MaxRecvMsgSize(10_000)))
	h := newHandler(t, c, Options{})
	w := serve(h, pushRequest(make([]byte, 20_000)))
	if w.Code != http.StatusRequestEntityTooLarge || !strings.Contains(w.Body.String(), "larger than max") {
		t.Fatalf("got %d %q", w.Code, w.Body)
	}
}

// TestUnresolvableTarget: before any good DNS answer, requests fail fast with
// 503 naming the resolution error.
func TestUnresolvableTarget(t *testing.T) {
	c := startCluster(t, 1)
	h := newHandler(t, c, Options{Target: "dns://" + c.DNS.Addr() + "/nowhere.mimir.test:" + c.Port, Timeout: 20e9})
	w := serve(h, pushRequest([]byte("x")))
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "nowhere.mimir.test") || w.Header().Get("Retry-After") == "" {
		t.Fatalf("got %d %q %v", w.Code, w.Body, w.Header())
	}
	if n := c.Servers[0].Calls(); n != 0 {
		t.Fatalf("%d calls", n)
	}
}
