package grpcpush

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/grafana/dskit/grpcutil"
	"github.com/grafana/dskit/httpgrpc"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"google.golang.org/grpc/metadata"
)

// TestInvalidTenantRefused: an X-Scope-OrgID value that breaks Mimir's
// tenant rules (each "|" part checked), or that gRPC metadata cannot carry,
// is a client error answered 400 naming the rule, without a call; valid
// values, federated ones included, reach the distributor as they are.
func TestInvalidTenantRefused(t *testing.T) {
	cl := startCluster(t, 1)
	h := newHandler(t, cl, Options{})
	for _, tc := range []struct {
		tenant string
		want   int
		rule   string
	}{
		{strings.Repeat("t", 200), http.StatusBadRequest, "too long: max 150"},
		{"team/a", http.StatusBadRequest, "unsupported character '/'"},
		{"team-a|team/b", http.StatusBadRequest, "unsupported character '/'"},
		{"team-a|", http.StatusBadRequest, "empty"},
		{"tenant-\xff", http.StatusBadRequest, "not printable ASCII"},
		{"a\tb", http.StatusBadRequest, "not printable ASCII"},
		{"tenant-1", http.StatusOK, ""},
		{"team-a|team-b", http.StatusOK, ""},
	} {
		before := cl.Distributors[0].Requests()
		r := pushRequest(standin.RemoteWriteBody(1, 1))
		r.Header.Set("X-Scope-OrgID", tc.tenant)
		w := serve(h, r)
		if w.Code != tc.want || !strings.Contains(w.Body.String(), tc.rule) {
			t.Errorf("tenant %q: %d %q, want %d naming %q", tc.tenant, w.Code, w.Body, tc.want, tc.rule)
		}
		if calls := cl.Distributors[0].Requests() - before; tc.want != http.StatusOK && calls != 0 {
			t.Errorf("tenant %q: %d calls reached the distributor", tc.tenant, calls)
		}
	}
}

// TestTenantMetadataReusesThePooledCall: the outgoing metadata (tenant and
// Mimir's limiter keys) lives in the pooled call, so that nothing grows with
// the number of tenants (no cache to bound: 100,000 distinct tenants leave
// one map of four keys) and a request allocates only the text of its
// message size for it.
func TestTenantMetadataReusesThePooledCall(t *testing.T) {
	c := getCall()
	defer putCall(c)
	c.req.msg.Method, c.req.msg.Url, c.req.bodyLen = http.MethodPost, "/api/v1/push", 42000
	size := strconv.Itoa(c.req.Size())
	want := func(md metadata.MD, tenant string) bool {
		return len(md) == 4 && slices.Equal(md[tenantMetadataKey], []string{tenant}) &&
			slices.Equal(md[httpgrpc.MetadataMethod], []string{http.MethodPost}) &&
			slices.Equal(md[httpgrpc.MetadataURL], []string{"/api/v1/push"}) &&
			slices.Equal(md[grpcutil.MetadataMessageSize], []string{size})
	}
	for i := 0; i < 100_000; i++ {
		tenant := "tenant-" + strconv.Itoa(i)
		if md := c.outgoingMD(tenant); !want(md, tenant) {
			t.Fatalf("tenant %d: metadata %v", i, md)
		}
	}
	c.outgoingMD("team-a")
	if got := c.outgoingMD("team-b"); !want(got, "team-b") {
		t.Fatalf("metadata %v, want exactly x-scope-orgid: [team-b] and the limiter's keys", got)
	}
	if n := testing.AllocsPerRun(100, func() { _ = c.outgoingMD("team-c") }); n != 1 {
		t.Errorf("%v allocations per request, want 1 (the message size's text)", n)
	}
}
