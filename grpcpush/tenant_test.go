package grpcpush

import (
	"net/http"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/examples/standin"
)

// TestTenantOutsideMetadata: X-Scope-OrgID values that HTTP allows but gRPC
// metadata cannot carry (bytes outside printable ASCII) are a client error,
// answered 400 without a call, not a 500 that remote-write clients retry
// forever. Printable values reach the distributor as they are.
func TestTenantOutsideMetadata(t *testing.T) {
	cl := startCluster(t, 1)
	h := newHandler(t, cl, Options{})
	for _, tc := range []struct {
		tenant string
		want   int
	}{
		{"tenant-\xff", http.StatusBadRequest},
		{"ü", http.StatusBadRequest},
		{"a\tb", http.StatusBadRequest},
		{"tenant-1", http.StatusOK},
	} {
		before := cl.Distributors[0].Requests()
		r := pushRequest(standin.RemoteWriteBody(1, 1))
		r.Header.Set("X-Scope-OrgID", tc.tenant)
		w := serve(h, r)
		if w.Code != tc.want {
			t.Errorf("tenant %q: %d %q, want %d", tc.tenant, w.Code, w.Body, tc.want)
		}
		if calls := cl.Distributors[0].Requests() - before; tc.want != http.StatusOK && calls != 0 {
			t.Errorf("tenant %q: %d calls reached the distributor", tc.tenant, calls)
		}
	}
}
