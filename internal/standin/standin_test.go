package standin

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/golang/snappy"
	"github.com/grafana/dskit/httpgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

func push(d http.Handler, body []byte, contentType, tenant string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, PushPath, bytes.NewReader(body))
	r.Header.Set("Content-Type", contentType)
	if tenant != "" {
		r.Header.Set("X-Scope-OrgID", tenant)
	}
	w := httptest.NewRecorder()
	d.ServeHTTP(w, r)
	return w
}

func TestDistributor(t *testing.T) {
	d := NewDistributor("d")
	d.KeepRecords(2)
	if w := push(d, RemoteWriteBody(2000, 1), ContentTypeRW1, "t1"); w.Code != 200 {
		t.Fatalf("RW1: %d %s", w.Code, w.Body)
	}
	w := push(d, RemoteWriteV2Body(100, 3), ContentTypeRW2, "t1")
	if w.Code != 204 || w.Header().Get(HeaderSamplesWritten) != "300" || w.Header().Get(HeaderExemplarsWritten) != "0" {
		t.Fatalf("RW2: %d %v", w.Code, w.Header())
	}
	if d.Requests() != 2 || d.Samples() != 2300 {
		t.Fatalf("counters %d %d", d.Requests(), d.Samples())
	}
	if w := push(d, []byte("not snappy"), ContentTypeRW1, "t1"); w.Code != 400 {
		t.Fatalf("garbage: %d", w.Code)
	}
	if w := push(d, RemoteWriteBody(1, 1), ContentTypeRW1, ""); w.Code != 401 {
		t.Fatalf("no tenant: %d", w.Code)
	}
	if recs := d.Records(); len(recs) != 2 || recs[1].Tenant != "" || recs[0].Tenant != "t1" {
		t.Fatalf("records %+v", recs)
	}
	d.SetBehavior(func(w http.ResponseWriter, _ *http.Request) bool {
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(http.StatusTooManyRequests)
		return true
	})
	if w := push(d, RemoteWriteBody(1, 1), ContentTypeRW1, "t1"); w.Code != 429 || w.Header().Get("Retry-After") != "3" {
		t.Fatalf("behavior: %d", w.Code)
	}
	d.Reset()
	if d.Requests() != 0 || d.Samples() != 0 || len(d.Records()) != 0 {
		t.Fatal("Reset kept state")
	}
}

func TestRemoteWriteBodies(t *testing.T) {
	raw, err := snappy.Decode(nil, RemoteWriteBody(2000, 1))
	if err != nil {
		t.Fatal(err)
	}
	c, err := DecodeRW1(raw)
	if err != nil || c.Series != 2000 || c.Samples != 2000 {
		t.Fatalf("RW1 %+v %v", c, err)
	}
	if bytes.Equal(RemoteWriteBodyAt(10, 1, 1), RemoteWriteBodyAt(10, 1, 2)) {
		t.Fatal("start time does not change the body")
	}
	raw, _ = snappy.Decode(nil, RemoteWriteV2Body(7, 2))
	if c, err := DecodeRW2(raw); err != nil || c.Series != 7 || c.Samples != 14 {
		t.Fatalf("RW2 %+v %v", c, err)
	}
	if _, err := DecodeRW1([]byte{0x0a, 0x05, 0x01}); err == nil {
		t.Fatal("truncated message accepted")
	}
}

// TestGRPCGroup: servers share a port on distinct addresses, enforce the
// tenant like Mimir and turn 4xx into errors carrying the HTTPResponse.
func TestGRPCGroup(t *testing.T) {
	d0, d1 := NewDistributor("0"), NewDistributor("1")
	servers, err := StartGRPCGroup([]http.Handler{d0, d1})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		t.Cleanup(s.Stop)
	}
	if servers[0].Port() != servers[1].Port() || servers[1].Addr() != GroupIP(1)+":"+strconv.Itoa(servers[0].Port()) {
		t.Fatalf("addresses %s %s", servers[0].Addr(), servers[1].Addr())
	}
	conn, err := grpc.NewClient(servers[1].Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := httpgrpc.NewHTTPClient(conn)
	req := &httpgrpc.HTTPRequest{Method: "POST", Url: PushPath, Body: RemoteWriteBody(10, 1),
		Headers: []*httpgrpc.Header{{Key: "X-Scope-OrgID", Values: []string{"t"}}}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	_, err = client.Handle(ctx, req)
	if st := status.Convert(err); st.Code() != codes.Unknown || st.Message() != "no org id" {
		t.Fatalf("without metadata: %v", err)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "x-scope-orgid", "t")
	resp, err := client.Handle(ctx, req)
	if err != nil || resp.Code != 200 || d1.Samples() != 10 || d0.Requests() != 0 {
		t.Fatalf("push: %v %v", resp, err)
	}
	req.Body = []byte("garbage")
	_, err = client.Handle(ctx, req)
	if r, ok := httpgrpc.HTTPResponseFromError(err); !ok || r.Code != 400 || status.Code(err) != 400 {
		t.Fatalf("bad body: %v", err)
	}
	if servers[1].Calls() != 3 {
		t.Fatalf("calls %d", servers[1].Calls())
	}
}

func TestErrorDetailsStatus(t *testing.T) {
	st := status.Convert(ErrorDetailsStatus(codes.FailedPrecondition, CauseIngestionRateLimited, "rate"))
	p := st.Proto()
	if st.Code() != codes.FailedPrecondition || st.Message() != "rate" || len(p.Details) != 1 || p.Details[0].TypeUrl != ErrorDetailsTypeURL {
		t.Fatalf("status %v", p)
	}
	num, typ, n := protowire.ConsumeTag(p.Details[0].Value)
	v, _ := protowire.ConsumeVarint(p.Details[0].Value[n:])
	if num != 1 || typ != protowire.VarintType || v != uint64(CauseIngestionRateLimited) {
		t.Fatalf("detail %x", p.Details[0].Value)
	}
}

func TestDNSServer(t *testing.T) {
	s, err := StartDNS()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	s.SetA("svc.test", "127.0.0.2", "127.0.0.3", "::1")
	for _, network := range []string{"udp", "tcp"} {
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, s.Addr())
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ips, err := r.LookupNetIP(ctx, "ip", "svc.test")
		cancel()
		if err != nil || len(ips) != 3 {
			t.Fatalf("%s: %v %v", network, ips, err)
		}
	}
	s.SetA("svc.test")
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, s.Addr())
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ips, err := r.LookupNetIP(ctx, "ip", "svc.test"); err == nil {
		t.Fatalf("empty name resolved to %v", ips)
	}
	s.Remove("svc.test")
	if _, err := r.LookupNetIP(ctx, "ip", "svc.test"); err == nil {
		t.Fatal("removed name resolved")
	}
	if s.Queries() == 0 {
		t.Fatal("no queries counted")
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
}
