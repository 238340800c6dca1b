package grpcpush

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grafana/dskit/httpgrpc"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// This file checks the error table of docs/errors.md against the code: each
// row is driven through a real Handler and dskit's httpgrpc server, and
// what the client gets must be what the row says. Rows the Caddy module
// answers itself are checked by caddyfile's TestDocsErrorTableCaddyRows.

const errorDoc = "../docs/errors.md"

// Markers of the error table in docs/errors.md.
const errorTableBegin, errorTableEnd = "<!-- error table: begin -->", "<!-- error table: end -->"

// caddyRows are the rows the Caddy module answers before any Handler runs.
var caddyRows = map[string]bool{
	"no call: several `X-Scope-OrgID` headers, without `tenant`":       true,
	"no call: `tenant` evaluates empty, or not to one valid tenant ID": true,
}

// mimirCauses are the names of Mimir's cortexpb.ErrorCause values
// (pkg/mimirpb/mimir.proto).
var mimirCauses = map[string]int32{
	"UNKNOWN_CAUSE": standin.CauseUnknown, "REPLICAS_DID_NOT_MATCH": standin.CauseReplicasDidNotMatch,
	"TOO_MANY_CLUSTERS": standin.CauseTooManyClusters, "BAD_DATA": standin.CauseBadData,
	"INGESTION_RATE_LIMITED": standin.CauseIngestionRateLimited, "REQUEST_RATE_LIMITED": standin.CauseRequestRateLimited,
	"INSTANCE_LIMIT": standin.CauseInstanceLimit, "SERVICE_UNAVAILABLE": standin.CauseServiceUnavailable,
	"TSDB_UNAVAILABLE": standin.CauseTSDBUnavailable, "TOO_BUSY": standin.CauseTooBusy,
	"CIRCUIT_BREAKER_OPEN": standin.CauseCircuitBreakerOpen, "METHOD_NOT_ALLOWED": standin.CauseMethodNotAllowed,
	"TENANT_LIMIT": standin.CauseTenantLimit, "ACTIVE_SERIES_LIMITED": standin.CauseActiveSeriesLimited,
}

// docRow is one row of the table.
type docRow struct{ what, status, retryAfter string }

func readErrorTable(t *testing.T) []docRow {
	t.Helper()
	b, err := os.ReadFile(errorDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, errorTableBegin), strings.Index(doc, errorTableEnd)
	if i < 0 || j < i {
		t.Fatalf("%s has no %s ... %s section", errorDoc, errorTableBegin, errorTableEnd)
	}
	lines := strings.Split(strings.TrimSpace(doc[i+len(errorTableBegin):j]), "\n")
	var rows []docRow
	for _, line := range lines[2:] {
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) != 3 {
			t.Fatalf("%s: row %q has %d cells, want 3", errorDoc, line, len(cells))
		}
		rows = append(rows, docRow{strings.TrimSpace(cells[0]), strings.TrimSpace(cells[1]), strings.TrimSpace(cells[2])})
	}
	return rows
}

var (
	backticked = regexp.MustCompile("`([^`]+)`")
	quoted     = regexp.MustCompile(`"([^"]+)"`)
)

// grpcCodes returns the gRPC codes a cell names (`UNAVAILABLE` ...), and
// whether every backticked word of it is one.
func grpcCodes(cell string) ([]codes.Code, bool) {
	var out []codes.Code
	for _, m := range backticked.FindAllStringSubmatch(cell, -1) {
		var c codes.Code
		if c.UnmarshalJSON([]byte(strconv.Quote(m[1]))) != nil {
			return out, false
		}
		out = append(out, c)
	}
	return out, len(out) > 0
}

// instance is one case of a row and what the client got.
type instance struct {
	name       string
	number     int  // for "that number": the status the component sent
	status     int  // written
	counted    int  // given to OnDone (0: not observed)
	answered   bool // OnAnswer was called (observed with counted only)
	retryAfter string
	relayed    bool // the component's own answer, its headers included
	body       string
}

// docFixture is what the probes share: a cluster whose one distributor
// answers the test paths, and Handlers over it.
type docFixture struct {
	t       *testing.T
	c       *cluster
	h       *Handler // Retries 1, MaxRequestBody 64 KiB, MaxResponseBody 4 KiB
	short   *Handler // Timeout 300ms
	arrived chan struct{}
	done    sync.Map // *http.Request → status given to OnDone
	answers sync.Map // *http.Request → OnAnswer was called
}

const (
	docMaxBody     = 64 << 10
	docMaxResponse = 4 << 10
)

// interceptor answers the test paths below the HTTP handler, as Mimir's
// components fail:
//
//	/raw/<code>/<message>  status.Error(code, message)
//	/cause/<n>             a cortexpb.ErrorDetails cause n
//	/status/<n>            an OK call with HTTP status n
//	/detail/<n>            an error with an HTTPResponse detail of status n
//	/big                   an OK call with a body over docMaxResponse
//	/hang                  no answer until the call is cancelled
func (f *docFixture) interceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	r, ok := req.(*httpgrpc.HTTPRequest)
	if !ok {
		return next(ctx, req)
	}
	parts := strings.SplitN(strings.TrimPrefix(r.Url, "/"), "/", 3)
	n := 0
	if len(parts) > 1 {
		n, _ = strconv.Atoi(parts[1])
	}
	switch parts[0] {
	case "raw":
		return nil, status.Error(codes.Code(n), parts[2])
	case "cause":
		return nil, standin.ErrorDetailsStatus(codes.Internal, int32(n), "cause "+parts[1])
	case "status":
		return &httpgrpc.HTTPResponse{Code: int32(n), Body: []byte("status " + parts[1])}, nil
	case "detail":
		return nil, httpgrpc.ErrorFromHTTPResponse(&httpgrpc.HTTPResponse{Code: int32(n), Body: []byte("detail")})
	case "big":
		return &httpgrpc.HTTPResponse{Code: 200, Body: make([]byte, docMaxResponse+MaxMessageOverhead+1)}, nil
	case "hang":
		select {
		case f.arrived <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return next(ctx, req)
}

func newDocFixture(t *testing.T) *docFixture {
	f := &docFixture{t: t, arrived: make(chan struct{}, 1)}
	f.c = startCluster(t, 1, standin.WithUnaryInterceptors(f.interceptor))
	f.c.Distributors[0].SetBehavior(distributorAnswers)
	f.h = newHandler(t, f.c, Options{
		Retries: Ptr(1), MaxRequestBody: docMaxBody, MaxResponseBody: docMaxResponse,
		OnDone:   func(r *http.Request, _ string, code int) { f.done.Store(r, code) },
		OnAnswer: func(r *http.Request, _ string) { f.answers.Store(r, true) },
	})
	f.short = newHandler(t, f.c, Options{Timeout: 300 * time.Millisecond})
	waitReady(t, f.h, 1)
	waitReady(t, f.short, 1)
	return f
}

// observe serves r through h and records what the client got.
func (f *docFixture) observe(name string, h http.Handler, r *http.Request) instance {
	w := serve(h, r)
	in := instance{name: name, status: w.Code, retryAfter: w.Header().Get("Retry-After"), body: w.Body.String(),
		relayed: w.Header().Get("X-From") == "distributor"}
	if v, ok := f.done.Load(r); ok {
		in.counted = v.(int)
		_, in.answered = f.answers.Load(r)
	}
	return in
}

// path serves a push to path through the main Handler.
func (f *docFixture) path(path string) instance {
	r := pushRequest([]byte("x"))
	r.RequestURI = path
	return f.observe(path, f.h, r)
}

// paths serves each path; number is the status the component sent, from
// the path's number.
func (f *docFixture) paths(paths ...string) []instance {
	var out []instance
	for _, p := range paths {
		in := f.path(p)
		if fields := strings.Split(p, "/"); len(fields) > 2 {
			in.number, _ = strconv.Atoi(fields[2])
		}
		out = append(out, in)
	}
	return out
}

// rawConn sends a request with a body of 3 of the 1000 bytes it announces
// to srv and reads the answer. Once wait has passed it closes its sending
// side: net/http, after the handler's answer, reads what is left of the
// body before it writes the answer, with no read deadline once the
// Handler has cleared its own (Caddy answers without).
func (f *docFixture) rawConn(name string, srv *httptest.Server, wait time.Duration) instance {
	conn := sendHead(f.t, srv.Listener.Addr().String(), 1000)
	defer conn.Close()
	if wait > 0 {
		time.Sleep(wait)
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			f.t.Fatal(err)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return instance{name: name, status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), body: string(b)}
}

// specialRows are the rows that need more than a call's result: the
// client, the Handler's state or its limits decide them.
func (f *docFixture) specialRows() map[string]func() []instance {
	t := f.t
	return map[string]func() []instance{
		"the component answered `499` (it saw the request canceled), the client still connected": func() []instance {
			// Mimir's way (a 4xx error carrying its HTTPResponse), a
			// component that answers it as OK, and one that sends it as
			// the code of a status without details.
			return f.paths("/http/499", "/status/499", "/raw/499/context canceled")
		},
		"`OK`: the component answered": func() []instance { return f.paths("/http/200", "/http/202") },
		"a status with an `httpgrpc.HTTPResponse` detail (Mimir's own 4xx and 5xx)": func() []instance {
			return f.paths("/http/400", "/http/429", "/http/500", "/http/503")
		},
		"a code 200–599 without details (Cortex's `httpgrpc.Errorf`)": func() []instance {
			return f.paths("/raw/200/x", "/raw/202/x", "/raw/400/x", "/raw/429/x", "/raw/503/x", "/raw/599/x")
		},
		"a code 100–199, or an answer whose status is not 200–599": func() []instance {
			return f.paths("/raw/100/x", "/raw/199/x", "/status/103", "/status/0", "/status/600", "/detail/150")
		},
		"`UNAVAILABLE` after the retries: endpoints gone, none READY, the name not resolved": func() []instance {
			out := f.paths("/raw/14/connection reset")
			nowhere := newHandler(t, f.c, Options{Target: "dns://" + f.c.DNS.Addr() + "/nowhere.mimir.test:" + f.c.Port})
			return append(out, f.observe("a name that does not resolve", nowhere, pushRequest([]byte("x"))))
		},
		"`DEADLINE_EXCEEDED`: no answer within `timeout`": func() []instance {
			out := f.paths("/raw/4/deadline")
			r := pushRequest([]byte("x"))
			r.RequestURI = "/hang"
			return append(out, f.observe("no answer within 300ms", f.short, r))
		},
		"`CANCELLED`, the client went away": func() []instance {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r := pushRequest([]byte("x")).WithContext(ctx)
			r.RequestURI = "/hang"
			select { // an earlier call's arrival
			case <-f.arrived:
			default:
			}
			go func() {
				<-f.arrived // this call is at the distributor
				cancel()
			}()
			return []instance{f.observe("client gone during the call", f.h, r)}
		},
		"`CANCELLED`, the client still connected (canceled on the way)": func() []instance {
			return f.paths("/raw/1/canceled by a proxy")
		},
		"`CANCELLED`, the upstream was closed (a reload retired it)": func() []instance {
			closed := newHandler(t, f.c, Options{})
			waitReady(t, closed, 1)
			if err := closed.Close(); err != nil {
				t.Fatal(err)
			}
			return []instance{f.observe("a closed Handler", closed, pushRequest([]byte("x")))}
		},
		"`RESOURCE_EXHAUSTED` \"larger than max\": the component's receive limit": func() []instance {
			return f.paths("/raw/8/grpc: received message larger than max (200 vs. 100)")
		},
		"`RESOURCE_EXHAUSTED`: the answer is larger than `max_response_body`": func() []instance {
			return f.paths("/big")
		},
		"`RESOURCE_EXHAUSTED`, anything else": func() []instance {
			return f.paths("/raw/8/too many inflight pushes")
		},
		"no call: no `X-Scope-OrgID`": func() []instance {
			r := pushRequest([]byte("x"))
			r.Header.Del("X-Scope-OrgID")
			return []instance{f.observe("no tenant", f.h, r)}
		},
		"no call: an `X-Scope-OrgID` that breaks Mimir's rules (each tenant of a federated value)": func() []instance {
			var out []instance
			for _, tenant := range []string{"a/b", "a|b/c", "a|", strings.Repeat("a", 151), "..", "tenant\x01"} {
				r := pushRequest([]byte("x"))
				r.Header.Set("X-Scope-OrgID", tenant)
				out = append(out, f.observe(strconv.Quote(tenant), f.h, r))
			}
			return out
		},
		"no call: a body larger than `max_request_body`": func() []instance {
			known := pushRequest(make([]byte, docMaxBody+1))
			unknown := pushRequest(make([]byte, docMaxBody+1))
			unknown.ContentLength = -1
			return []instance{f.observe("announced", f.h, known), f.observe("chunked", f.h, unknown)}
		},
		"no call: a body cut by `request_body { max_size }`": func() []instance {
			w := httptest.NewRecorder()
			r := pushRequest(make([]byte, 100))
			r.Body = http.MaxBytesReader(w, r.Body, 10)
			f.h.ServeHTTP(w, r)
			return []instance{{name: "max_size 10", status: w.Code, retryAfter: w.Header().Get("Retry-After"), body: w.Body.String()}}
		},
		"no call: the bodies held would pass `max_buffered_bytes`": func() []instance {
			budget := NewBudget(64<<10, nil, "")
			held, err := budget.take(64 << 10)
			if err != nil {
				t.Fatal(err)
			}
			defer budget.Put(held)
			p, err := NewPriority([]*Handler{f.h}, PriorityOptions{Budget: budget})
			if err != nil {
				t.Fatal(err)
			}
			return []instance{f.observe("budget full", p, pushRequest([]byte("x")))}
		},
		"no call: a body not in within `timeout`, or within the server's `read_body`": func() []instance {
			readBody := httptest.NewUnstartedServer(f.h)
			readBody.Config.ReadTimeout = 300 * time.Millisecond
			readBody.Start()
			t.Cleanup(readBody.Close)
			return []instance{f.rawConn("timeout 300ms", frontend(t, f.short), time.Second), f.rawConn("read_body 300ms", readBody, 0)}
		},
		"no call: a body that ends before its `Content-Length`, or fails to read": func() []instance {
			r := pushRequest([]byte("abc"))
			r.ContentLength = 1000
			return []instance{f.observe("3 of 1000 bytes", f.h, r)}
		},
	}
}

// causeRow runs every cause a row names, or, for "any other kind", the
// causes no row names.
func (f *docFixture) causeRow(row docRow, named map[int32]bool) []instance {
	var causes []int32
	if strings.HasSuffix(row.what, "of any other kind") {
		for _, n := range mimirCauses {
			if _, mapped := causeStatus[n]; !mapped {
				causes = append(causes, n)
			}
		}
		causes = append(causes, 99) // one Mimir may add
	}
	for _, m := range backticked.FindAllStringSubmatch(row.what, -1)[1:] { // [0] is cortexpb.ErrorDetails
		n, ok := mimirCauses[m[1]]
		if !ok {
			f.t.Errorf("row %q: %s is not one of Mimir's causes", row.what, m[1])
			continue
		}
		named[n] = true
		causes = append(causes, n)
	}
	var out []instance
	for _, n := range causes {
		out = append(out, f.path("/cause/"+strconv.Itoa(int(n))))
	}
	return out
}

// codeRow runs every gRPC code a row names, with the message it quotes.
func (f *docFixture) codeRow(row docRow, cs []codes.Code) []instance {
	msg := "something else"
	if m := quoted.FindStringSubmatch(row.what); m != nil {
		msg = m[1]
	}
	var out []instance
	for _, c := range cs {
		out = append(out, f.path("/raw/"+strconv.Itoa(int(c))+"/"+msg))
	}
	return out
}

// TestErrorTableInDocs drives every row of docs/errors.md's error table
// through a Handler and checks the status, the Retry-After and, where the
// row says so, what is counted. Every gRPC code and every cause the code
// maps must be in the table.
func TestErrorTableInDocs(t *testing.T) {
	t.Parallel()
	f := newDocFixture(t)
	special := f.specialRows()
	rows := readErrorTable(t)
	namedCodes := map[codes.Code]bool{}
	namedCauses := map[int32]bool{}
	seen := map[string]bool{}
	for _, row := range rows {
		if seen[row.what] {
			t.Errorf("row %q is in the table twice", row.what)
		}
		seen[row.what] = true
		cs, _ := grpcCodes(row.what)
		for _, c := range cs {
			namedCodes[c] = true
		}
		if caddyRows[row.what] {
			continue
		}
		var got []instance
		if probe, ok := special[row.what]; ok {
			got = probe()
		} else if cs, ok := grpcCodes(row.what); ok {
			got = f.codeRow(row, cs)
		} else if strings.HasPrefix(row.what, "a status with a `cortexpb.ErrorDetails` cause") {
			got = f.causeRow(row, namedCauses)
		} else {
			t.Errorf("row %q: this test does not know how to check it", row.what)
			continue
		}
		if len(got) == 0 {
			t.Errorf("row %q: nothing checked", row.what)
		}
		for _, in := range got {
			if msg := checkRow(row, in); msg != "" {
				t.Errorf("row %q, %s: %s (got %d %q, Retry-After %q)", row.what, in.name, msg, in.status, in.body, in.retryAfter)
			}
		}
	}
	for what := range special {
		if !seen[what] {
			t.Errorf("docs/errors.md lost the row %q", what)
		}
	}
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if !namedCodes[c] {
			t.Errorf("gRPC code %v is in no row of the table", c)
		}
	}
	for c := range codeStatus {
		if !namedCodes[c] {
			t.Errorf("codeStatus maps %v, which no row names", c)
		}
	}
	for n := range causeStatus {
		if !namedCauses[n] {
			t.Errorf("causeStatus maps cause %d, which no row names", n)
		}
	}
}

// checkRow says how in differs from what row promises, or "".
func checkRow(row docRow, in instance) string {
	switch {
	case row.status == "its answer, relayed":
		if !in.relayed || in.status != in.number {
			return "not the component's answer, relayed"
		}
	case row.status == "that number":
		if in.status != in.number || in.relayed {
			return "status is not " + strconv.Itoa(in.number)
		}
	default:
		written, rest, _ := strings.Cut(row.status, " ")
		want, err := strconv.Atoi(written)
		if err != nil {
			return "cannot read the status cell"
		}
		if in.status != want {
			return "status is not " + written
		}
		if _, counted, ok := strings.Cut(rest, "counted "); ok {
			if in.counted != atoi(counted) || in.answered {
				return "not counted " + counted + " without an answer (OnDone " + strconv.Itoa(in.counted) + ")"
			}
		}
	}
	switch row.retryAfter {
	case "the component's":
		if in.retryAfter != "7" {
			return "Retry-After is not the component's"
		}
	case "the gateway's":
		if !retryAfterIs(in.retryAfter, gw) {
			return "Retry-After is not the gateway's"
		}
	case "the gateway's on 429 and 503":
		if (in.status == 429 || in.status == 503) != retryAfterIs(in.retryAfter, gw) {
			return "Retry-After is not the gateway's on 429 and 503 only"
		}
	case "—":
		if in.retryAfter != "" {
			return "a Retry-After"
		}
	default:
		return "cannot read the Retry-After cell"
	}
	return ""
}

func atoi(s string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(s))
	return n
}

// TestErrorTableRowsParse pins how the table cells are read.
func TestErrorTableRowsParse(t *testing.T) {
	cs, ok := grpcCodes("`INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`")
	if !ok || len(cs) != 3 || cs[0] != codes.InvalidArgument || cs[2] != codes.OutOfRange {
		t.Errorf("grpcCodes: %v %v", cs, ok)
	}
	if _, ok := grpcCodes("`RESOURCE_EXHAUSTED`: the answer is larger than `max_response_body`"); ok {
		t.Error("grpcCodes took max_response_body for a code")
	}
	if len(mimirCauses) != 14 {
		t.Errorf("mimirCauses: %d names, Mimir has 14", len(mimirCauses))
	}
}
