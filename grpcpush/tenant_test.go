package grpcpush

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
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

// TestTenantMetadataReusesThePooledCall: the outgoing tenant metadata lives
// in the pooled call, so that nothing grows with the number of tenants (no
// cache to bound: 100,000 distinct tenants leave one map of one key) and a
// request allocates none for it.
func TestTenantMetadataReusesThePooledCall(t *testing.T) {
	c := getCall()
	defer putCall(c)
	for i := 0; i < 100_000; i++ {
		tenant := "tenant-" + strconv.Itoa(i)
		if md := c.tenantMD(tenant); len(md) != 1 || len(md[tenantMetadataKey]) != 1 || md[tenantMetadataKey][0] != tenant {
			t.Fatalf("tenant %d: metadata %v", i, md)
		}
	}
	c.tenantMD("team-a")
	if got := c.tenantMD("team-b"); len(got) != 1 || len(got[tenantMetadataKey]) != 1 || got[tenantMetadataKey][0] != "team-b" {
		t.Fatalf("metadata %v, want exactly x-scope-orgid: [team-b]", got)
	}
	if n := testing.AllocsPerRun(100, func() { _ = c.tenantMD("team-c") }); n != 0 {
		t.Errorf("%v allocations per request, want 0", n)
	}
}
