package caddymodule_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/metrics-gateway/metrics_gateway/caddymodule"
	"github.com/metrics-gateway/metrics_gateway/grpcpush"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// zones are per-zone distributor stand-ins (dskit's httpgrpc server) with
// one real DNS server answering a name per zone, like Mimir's per-zone
// headless Services.
type zones struct {
	z     []*standin.Cluster
	conns atomic.Int64 // open gRPC connections, all zones
}

// startZones starts len(names) zones of n distributors each; the DNS server
// lists the first listed of each zone.
func startZones(t *testing.T, n, listed int, names ...string) *zones {
	t.Helper()
	zs := &zones{}
	var err error
	zs.z, err = standin.StartZones(names, n, standin.WithServerOptions(grpc.StatsHandler(connCounter{&zs.conns})))
	if err != nil {
		t.Fatal(err)
	}
	for _, z := range zs.z {
		t.Cleanup(z.Stop)
		z.List(listed)
	}
	return zs
}

// url is the backend URL listing the zones in the given order.
func (zs *zones) url(order ...int) string {
	var targets []string
	for _, i := range order {
		targets = append(targets, zs.z[i].Target())
	}
	return strings.Join(targets, " ")
}

// handlerJSON is a gateway whose distributor is the zones in order.
func (zs *zones) handlerJSON(grpcOpts string, order ...int) string {
	return fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {
		"default": {"url": "http://127.0.0.1:1"},
		"distributor": {"url": %q, "grpc": {%s}}}}]`, zs.url(order...), grpcOpts)
}

// requests is each zone's total of requests.
func (zs *zones) requests() []int64 {
	out := make([]int64, len(zs.z))
	for i, z := range zs.z {
		for _, n := range z.Requests() {
			out[i] += n
		}
	}
	return out
}

func (zs *zones) reset() {
	for _, z := range zs.z {
		for _, d := range z.Distributors {
			d.Reset()
		}
	}
}

// groups returns the distributor's groups from the admin view.
func groups(t *testing.T, c *testcaddy.Caddy) []caddymodule.GroupStatus {
	t.Helper()
	got := backendStatuses(t, c)
	for _, bs := range got {
		if bs.Component == caddymodule.ComponentDistributor {
			return bs.Groups
		}
	}
	t.Fatalf("no distributor in %+v", got)
	return nil
}

// waitServing waits until the admin view says group i serves with n ready
// endpoints.
func waitServing(t *testing.T, c *testcaddy.Caddy, i, ready int) {
	t.Helper()
	standin.WaitFor(t, 20*time.Second, fmt.Sprintf("group %d serving with %d ready", i+1, ready), func() bool {
		g := groups(t, c)
		return g[i].Serving && g[i].Ready == ready
	})
}

var zoneNames = []string{"distributor-zone-a.mimir.test", "distributor-zone-b.mimir.test", "distributor-zone-c.mimir.test"}

// pushN pushes n times and fails the test on any failure.
func pushN(t *testing.T, c *testcaddy.Caddy, n int, body []byte) {
	t.Helper()
	for i := 0; i < n; i++ {
		if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
			t.Fatalf("push %d: %v %q", i, err, b)
		}
	}
}

// TestGRPCZonesFailover: three zones on one DNS server. All traffic goes to
// the first; when every endpoint of the first stops, the second takes over
// with at most 1 % failed pushes and none lost; once the first zone's DNS
// name answers a live endpoint, traffic returns within refresh + 1 s.
func TestGRPCZonesFailover(t *testing.T) {
	t.Parallel()
	const refresh = 300 * time.Millisecond
	zs := startZones(t, 3, 2, zoneNames...) // zone a lists distributors 0, 1; 2 stands by
	c := testcaddy.Start(t, zs.handlerJSON(`"refresh": "300ms"`, 0, 1, 2))
	body := standin.RemoteWriteBody(200, 1)
	waitServing(t, c, 0, 2)
	zs.reset()
	pushN(t, c, 50, body)
	if got := zs.requests(); got[0] != 50 || got[1] != 0 || got[2] != 0 {
		t.Fatalf("per-zone requests %v, want all 50 in zone a", got)
	}

	var acked, failed atomic.Int64
	var firstErr atomic.Value
	conns := make([]func() error, 4) // 4 remote-write shards, one connection each
	for i := range conns {
		client := oneConnClient(t, c)
		conns[i] = func() error {
			resp, b, err := push(client, body)
			if err == nil && resp.StatusCode != 200 {
				err = fmt.Errorf("%s: %s", resp.Status, b)
			}
			return err
		}
	}
	stop := runLoad(t, len(conns), func(w int) {
		if err := conns[w](); err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err)
		} else {
			acked.Add(1)
		}
	})
	standin.WaitFor(t, time.Minute, "traffic before the outage", func() bool { return acked.Load() >= 200 })
	before := zs.requests()
	if before[1] != 0 || before[2] != 0 {
		t.Errorf("per-zone requests %v before the outage, want all in zone a", before)
	}
	zs.z[0].Servers[0].Stop()
	zs.z[0].Servers[1].Stop()
	afterOutage := acked.Load()
	standin.WaitFor(t, time.Minute, "traffic after the outage", func() bool { return acked.Load() >= afterOutage+400 })
	stop()

	var received int64
	for _, n := range zs.requests() {
		received += n
	}
	if received < acked.Load() {
		t.Errorf("%d pushes acknowledged but only %d reached a distributor", acked.Load(), received)
	}
	total := acked.Load() + failed.Load()
	if float64(failed.Load()) > 0.01*float64(total) {
		t.Errorf("%d of %d pushes failed (> 1%%), first: %v", failed.Load(), total, firstErr.Load())
	}
	split := zs.requests()
	if split[1] == 0 || split[2] != 0 {
		t.Errorf("per-zone requests %v: zone b should have taken over, zone c nothing", split)
	}
	after := make([]int64, len(split))
	for i := range split {
		after[i] = split[i] - before[i]
	}
	t.Logf("per-zone requests before the outage of zone a %v, after it %v; %d pushes acknowledged, %d failed",
		before, after, acked.Load(), failed.Load())
	waitServing(t, c, 1, 2)

	// Zone a comes back as a new pod: its DNS name answers distributor 2.
	zs.z[0].ListOnly(2)
	back := time.Now()
	standin.WaitFor(t, 20*time.Second, "zone a to get traffic again", func() bool {
		_, _, _ = push(c.Client, body)
		return zs.z[0].Distributors[2].Requests() > 0
	})
	if took := time.Since(back); took > refresh+time.Second {
		t.Errorf("zone a got traffic %v after its DNS answer, want within refresh + 1s", took)
	}
	zs.reset()
	pushN(t, c, 30, body)
	if got := zs.requests(); got[0] != 30 {
		t.Errorf("per-zone requests %v after zone a came back, want all 30 in zone a", got)
	}
}

// TestGRPCZonesMinReady: with min_ready 2, the first zone stops serving
// when it drops to one READY endpoint.
func TestGRPCZonesMinReady(t *testing.T) {
	t.Parallel()
	zs := startZones(t, 2, 2, zoneNames[:2]...)
	c := testcaddy.Start(t, zs.handlerJSON(`"refresh": "300ms", "min_ready": 2`, 0, 1))
	body := standin.RemoteWriteBody(50, 1)
	waitServing(t, c, 0, 2)
	zs.reset()
	pushN(t, c, 20, body)
	if got := zs.requests(); got[0] != 20 || got[1] != 0 {
		t.Fatalf("per-zone requests %v, want all 20 in zone a", got)
	}

	zs.z[0].Servers[1].Stop()
	waitServing(t, c, 1, 2)
	if g := groups(t, c); g[0].Ready != 1 {
		t.Errorf("zone a has %d ready endpoints, want 1: %+v", g[0].Ready, g[0])
	}
	zs.reset()
	pushN(t, c, 20, body)
	if got := zs.requests(); got[0] != 0 || got[1] != 20 {
		t.Errorf("per-zone requests %v with zone a below min_ready, want all 20 in zone b", got)
	}
	perTarget := map[string]float64{}
	for series, v := range parseExposition(scrape(t, c)) {
		if strings.HasPrefix(series, "metrics_gateway_grpc_requests_total{") && strings.Contains(series, `code="200"`) {
			for _, z := range zs.z {
				if strings.Contains(series, `target="`+z.Target()+`"`) {
					perTarget[z.Name] += v
				}
			}
		}
	}
	if perTarget[zs.z[0].Name] != 20 || perTarget[zs.z[1].Name] != 20 {
		t.Errorf("requests_total by target %v, want 20 each", perTarget)
	}
}

// TestGRPCZonesReorderKeepsConnections: a reload that changes only the
// order of the targets and min_ready keeps every connection, and the new
// first group serves.
func TestGRPCZonesReorderKeepsConnections(t *testing.T) {
	t.Parallel()
	zs := startZones(t, 2, 2, zoneNames[:2]...)
	c := testcaddy.Start(t, zs.handlerJSON("", 0, 1))
	standin.WaitFor(t, 20*time.Second, "4 connections", func() bool { return zs.conns.Load() == 4 })
	waitServing(t, c, 0, 2)
	if err := c.Reload(zs.handlerJSON(`"min_ready": 2`, 1, 0)); err != nil {
		t.Fatal(err)
	}
	waitServing(t, c, 0, 2)
	if g := groups(t, c); g[0].Target != zs.z[1].Target() {
		t.Errorf("first group after the reload is %s, want %s", g[0].Target, zs.z[1].Target())
	}
	if got := zs.conns.Load(); got != 4 {
		t.Errorf("%d gRPC connections after the reload, want the same 4", got)
	}
	zs.reset()
	body := standin.RemoteWriteBody(10, 1)
	for i := 0; i < 10; i++ {
		// Retrying network errors: the first push may meet the keep-alive
		// connection the old server closes (see pushRetrying).
		if resp, b, err := pushRetrying(c.Client, body, nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("push %d: %v %q", i, err, b)
		}
	}
	if got := zs.requests(); got[1] != 10 {
		t.Errorf("per-zone requests %v, want all 10 in zone b (now first)", got)
	}
}

// TestZoneReorderKeepsOneBudget: a reload that only reorders the zones
// keeps the backend's one max_buffered_bytes for the old config's requests
// and the new one's. With the bound at what one 16 MiB body needs while it
// is read, an upload held by the old config leaves no room for a second
// one under the new config: it is answered 503 (two budgets took both).
func TestZoneReorderKeepsOneBudget(t *testing.T) {
	t.Parallel()
	zs := startZones(t, 1, 1, zoneNames[:2]...)
	opts := fmt.Sprintf(`"timeout": "15s", "max_request_body": %d, "max_buffered_bytes": %d`, 16<<20, grpcpush.MinBufferedBytes(16<<20))
	c := testcaddy.Start(t, zs.handlerJSON(opts, 0, 1))
	if resp, b, err := push(c.Client, standin.RemoteWriteBody(10, 1)); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("push: %v %v %q", err, resp, b)
	}
	const size, sent = 16 << 20, 15 << 20
	stalledH1(t, c, size, sent)
	standin.WaitFor(t, 20*time.Second, "the old config's upload holding 16 MiB", func() bool {
		held, _ := distributorBuffered(t, c)
		return held == size
	})
	if err := c.Reload(zs.handlerJSON(opts, 1, 0)); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-stalledH1(t, c, size, sent):
		if code != http.StatusServiceUnavailable {
			t.Errorf("the new config's upload: %d, want 503 (the shared bound is full)", code)
		}
	case <-time.After(time.Minute):
		t.Fatal("the new config's upload was held: the reorder started a second bound")
	}
}
