package grpcpush

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	zapobserver "go.uber.org/zap/zaptest/observer"

	"github.com/metrics-gateway/metrics_gateway/examples/standin"
)

// TestPassiveHealthLogs checks the info lines for an endpoint going out and
// coming back, each naming the endpoint and the failure.
func TestPassiveHealthLogs(t *testing.T) {
	c := startCluster(t, 2)
	core, logs := zapobserver.New(zapcore.InfoLevel)
	h := newHandler(t, c, Options{Logger: zap.New(core), Retries: Ptr(0),
		FailDuration: 300 * time.Millisecond, MaxFails: 1, UnhealthyStatus: []int{503}})
	waitReady(t, h, 2)
	c.Distributors[1].SetBehavior(func(w http.ResponseWriter, _ *http.Request) bool {
		http.Error(w, "ingesters down", http.StatusServiceUnavailable)
		return true
	})
	body := standin.RemoteWriteBody(10, 1)
	sick := c.Addr(1)
	waitFor(t, 10*time.Second, "the out line", func() bool {
		serve(h, pushRequest(body))
		return logs.FilterMessageSnippet("endpoint out").Len() > 0
	})
	out := logs.FilterMessageSnippet("endpoint out").All()[0].ContextMap()
	if out["endpoint"] != sick || out["failure"] != "status 503" || out["backend"] != DefaultBackendName {
		t.Errorf("out line %v, want endpoint %s and failure status 503", out, sick)
	}
	waitFor(t, 10*time.Second, "the back line", func() bool {
		return logs.FilterMessageSnippet("endpoint back").Len() > 0
	})
	back := logs.FilterMessageSnippet("endpoint back").All()[0].ContextMap()
	if back["endpoint"] != sick || back["last_failure"] != "status 503" {
		t.Errorf("back line %v", back)
	}
}

// TestHealthOptionsChecked checks that bad policy and health values fail New
// with the field's name.
func TestHealthOptionsChecked(t *testing.T) {
	c := startCluster(t, 1)
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{LBPolicy: "random"}, `lb_policy "random"`},
		{Options{FailDuration: time.Second, MaxFails: -1}, "max_fails -1"},
		{Options{FailDuration: -time.Second}, "fail_duration -1s"},
		{Options{FailDuration: time.Second, UnhealthyStatus: []int{600}}, "unhealthy_status 600"},
		{Options{FailDuration: time.Second, UnhealthyLatency: -1}, "unhealthy_latency"},
		{Options{MaxFails: 2}, "need fail_duration"},
	} {
		tc.opts.Target = c.Target()
		if _, err := New(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v): %v, want it to mention %q", tc.opts, err, tc.want)
		}
	}
	a, _ := Options{Target: c.Target()}.Key()
	b, _ := Options{Target: c.Target(), LBPolicy: LBLeastConn}.Key()
	d, _ := Options{Target: c.Target(), FailDuration: time.Second}.Key()
	if a == b || a == d {
		t.Error("Key ignores lb_policy or passive health settings")
	}
}

// TestLeastConnBalancedWhenHealthy checks that least_conn spreads calls
// evenly over equal endpoints.
func TestLeastConnBalancedWhenHealthy(t *testing.T) {
	c := startCluster(t, 3)
	h := newHandler(t, c, Options{LBPolicy: LBLeastConn})
	waitReady(t, h, 3)
	body := standin.RemoteWriteBody(10, 1)
	for i := 0; i < 600; i++ {
		if w := serve(h, pushRequest(body)); w.Code != http.StatusOK {
			t.Fatalf("push: %d %s", w.Code, w.Body)
		}
	}
	for i, n := range c.Requests() {
		// Sequential calls: least_request's two random choices both see 0
		// in flight, so the choice is uniform; 600 calls give ~200 ± 12.
		if n < 140 || n > 260 {
			t.Errorf("distributor %d got %d of 600 calls", i, n)
		}
	}
}
