package caddymodule_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/caddymodule"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// soakEnv turns TestSoak into the long run: METRICS_GATEWAY_SOAK=10m.
const soakEnv = "METRICS_GATEWAY_SOAK"

// Bounds of TestSoak: what the process may hold at the end beyond what it
// held at the start.
const (
	soakGoroutineTolerance = 10
	soakFDTolerance        = 5
	soakRSSTolerance       = 64 << 20
)

// soakSnapshot is what the soak compares between start and end.
type soakSnapshot struct {
	goroutines, fds, upstreams, gateways, serverConns, series int
	rss                                                       int64
	names                                                     map[string]bool
}

func (s soakSnapshot) String() string {
	return fmt.Sprintf("goroutines %d, fds %d, pooled gRPC upstreams %d, live gateways %d, server-side gRPC connections %d, metric series %d, RSS %.1f MiB",
		s.goroutines, s.fds, s.upstreams, s.gateways, s.serverConns, s.series, float64(s.rss)/(1<<20))
}

func snapshot(t *testing.T, c *testcaddy.Caddy, cl *cluster) soakSnapshot {
	runtime.GC()
	debug.FreeOSMemory()
	s := takeSnapshot(t, c, cl)
	s.series = len(s.names)
	return s
}

func takeSnapshot(t *testing.T, c *testcaddy.Caddy, cl *cluster) soakSnapshot {
	return soakSnapshot{
		goroutines: standin.NumGoroutines(), fds: count(t, c.FDs),
		upstreams: caddymodule.PooledGRPCUpstreams(), gateways: caddymodule.LiveGateways(),
		serverConns: int(cl.conns.Load()), names: gatewaySeries(t, c), rss: rss(t),
	}
}

// gatewaySeries returns the gateway's series (cortex_* and
// metrics_gateway_*) at the admin /metrics endpoint.
func gatewaySeries(t *testing.T, c *testcaddy.Caddy) map[string]bool {
	code, body, err := c.AdminGet("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "cortex_") || strings.HasPrefix(l, "metrics_gateway_") {
			names[l[:strings.LastIndexByte(l, ' ')]] = true
		}
	}
	return names
}

func rss(t *testing.T) int64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// statusLabel finds the status code label of a series.
var statusLabel = regexp.MustCompile(`(?:status_code|code)="([0-9]+)"`)

// unexpectedSeries returns the series of end that start did not have,
// except those of a status code start had not seen at all (a code first
// answered during the run adds its series once: bounded by the codes, not
// by the run's length).
func unexpectedSeries(start, end map[string]bool) []string {
	seen := map[string]bool{}
	for name := range start {
		if m := statusLabel.FindStringSubmatch(name); m != nil {
			seen[m[1]] = true
		}
	}
	var out []string
	for name := range end {
		if start[name] {
			continue
		}
		if m := statusLabel.FindStringSubmatch(name); m != nil && !seen[m[1]] {
			continue
		}
		out = append(out, name)
	}
	return out
}

// bitmap is a fixed set of push IDs, allocated before the start snapshot.
type bitmap []atomic.Uint64

func (b bitmap) set(i int64)      { b[i/64].Or(1 << (i % 64)) }
func (b bitmap) has(i int64) bool { return b[i/64].Load()&(1<<(i%64)) != 0 }

// TestSoak: push load from 4 clients while the admin API reloads the config
// over and over, alternating two distributor settings (each reload builds a
// new gRPC upstream and retires the old one), and while the distributors'
// DNS name changes every refresh (addresses added and removed). Every
// acknowledged push must have reached a distributor, and at the end the
// process's goroutines, fds, gRPC upstreams and connections, metric series
// and RSS must be within the bounds above of the start. By default it runs
// seconds with 10 reloads; METRICS_GATEWAY_SOAK=10m runs 10 minutes with 200.
func TestSoak(t *testing.T) {
	duration, reloads := 3*time.Second, 10
	if v := os.Getenv(soakEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", soakEnv, v, err)
		}
		duration, reloads = d, 200
	}
	const clients, maxPushes = 4, 1 << 24
	const refresh = 200 * time.Millisecond
	cl := startCluster(t, 4)
	acked, received := make(bitmap, maxPushes/64), make(bitmap, maxPushes/64)
	for _, d := range cl.Distributors {
		d.SetBehavior(func(_ http.ResponseWriter, r *http.Request) bool {
			if id, err := strconv.ParseInt(r.Header.Get("X-Push-Id"), 10, 64); err == nil && id < maxPushes {
				received.set(id)
			}
			return false // and answer as a distributor does
		})
	}
	configs := [2]string{
		cl.handlerJSON(`"refresh": "200ms", "timeout": "10s"`),
		cl.handlerJSON(`"refresh": "200ms", "timeout": "9s"`),
	}
	c := testcaddy.Start(t, configs[0])
	body := standin.RemoteWriteBody(100, 1)
	var nextID, netErrors atomic.Int64
	var fiveXX sync.Map // status → *atomic.Int64
	pushOne := func(client *http.Client) (ok bool, retries int) {
		id := nextID.Add(1)
		if id >= maxPushes {
			return false, 0
		}
		for try := 0; try < 10; try++ {
			resp, err := client.Do(newPush(body, func(h http.Header) {
				h.Set("X-Scope-OrgID", "tenant-1")
				h.Set("X-Push-Id", strconv.FormatInt(id, 10))
			}))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					acked.set(id)
					return true, try
				}
				if resp.StatusCode < 500 {
					t.Errorf("push %d: %s", id, resp.Status)
					return false, try
				}
				n, _ := fiveXX.LoadOrStore(resp.StatusCode, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
			} else {
				netErrors.Add(1)
			}
			// A remote-write client retries network errors and 5xx.
		}
		t.Errorf("push %d: no success in 10 tries", id)
		return false, 10
	}

	// useEveryEndpoint pushes until each distributor got a push through the
	// current gRPC upstream (its per-endpoint series exist).
	useEveryEndpoint := func() {
		standin.WaitFor(t, 20*time.Second, "every endpoint serving", func() bool {
			before := cl.Requests()
			for i := 0; i < 8; i++ {
				pushOne(c.Client)
			}
			after := cl.Requests()
			for i := range after {
				if after[i] == before[i] {
					return false
				}
			}
			return true
		})
	}
	// Warm up under both configs, ending on the first, so the start
	// snapshot holds every series the run can create.
	for i := 0; i < 2; i++ {
		if err := c.Reload(configs[(i+1)%2]); err != nil {
			t.Fatal(err)
		}
		useEveryEndpoint()
	}
	c.Client.CloseIdleConnections()
	standin.WaitFor(t, 20*time.Second, "one pooled gRPC upstream", func() bool { return caddymodule.PooledGRPCUpstreams() == 1 && cl.conns.Load() == 4 })
	start := snapshot(t, c, cl)
	t.Logf("start: %v", start)

	// Load, reloads and DNS churn run until the deadline.
	deadline := time.Now().Add(duration)
	var pushes, pushRetries atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < clients; w++ {
		client := oneConnClient(t, c)
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if ok, r := pushOne(client); ok {
					pushes.Add(1)
					pushRetries.Add(int64(r))
				} else if nextID.Load() >= maxPushes {
					return
				}
			}
			client.CloseIdleConnections()
		})
	}
	subsets := [][]int{{0, 1}, {1, 2, 3}, {3}, {0, 2}, {0, 1, 2, 3}, {2, 3}, {1}, {0, 3}}
	var churns atomic.Int64
	wg.Go(func() {
		for i := 0; time.Now().Before(deadline); i++ {
			cl.ListOnly(subsets[i%len(subsets)]...)
			churns.Add(1)
			time.Sleep(refresh) // the churn's own pace: one change per refresh
		}
		cl.List(4)
	})
	interval := duration / time.Duration(reloads)
	for i := 0; i < reloads; i++ {
		if err := c.Reload(configs[i%2]); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		if wait := time.Until(deadline.Add(-duration + time.Duration(i+1)*interval)); wait > 0 {
			time.Sleep(wait) // pacing the reloads over the run
		}
	}
	wg.Wait()
	if err := c.Reload(configs[0]); err != nil { // ends on the start's config
		t.Fatal(err)
	}

	// Every acknowledged push reached a distributor.
	lost := 0
	for id := int64(1); id < nextID.Load() && id < maxPushes; id++ {
		if acked.has(id) && !received.has(id) {
			lost++
		}
	}
	retried := map[string]int64{"network error": netErrors.Load()}
	fiveXX.Range(func(k, v any) bool { retried[strconv.Itoa(k.(int))] = v.(*atomic.Int64).Load(); return true })
	t.Logf("%v: %d pushes acknowledged after %d retries %v, %d lost; %d reloads, %d DNS changes",
		duration, pushes.Load(), pushRetries.Load(), retried, lost, reloads, churns.Load())
	if lost > 0 {
		t.Errorf("%d acknowledged pushes never reached a distributor", lost)
	}
	if pushes.Load() == 0 {
		t.Fatal("no pushes")
	}

	// Back within bounds: use every endpoint once more (their series are
	// in the start snapshot), then poll until the retired upstreams are
	// closed and connections wound down.
	useEveryEndpoint()
	c.Client.CloseIdleConnections()
	var end soakSnapshot
	deadlineEnd := time.Now().Add(60 * time.Second)
	for {
		end = snapshot(t, c, cl)
		within := end.goroutines <= start.goroutines+soakGoroutineTolerance && end.fds <= start.fds+soakFDTolerance &&
			end.upstreams <= start.upstreams && end.gateways <= start.gateways && end.serverConns <= start.serverConns &&
			len(unexpectedSeries(start.names, end.names)) == 0 && end.rss <= start.rss+soakRSSTolerance
		if within {
			break
		}
		if time.Now().After(deadlineEnd) {
			t.Fatalf("not back within bounds after 60s:\nstart: %v\nend:   %v\nunexpected new series: %q",
				start, end, unexpectedSeries(start.names, end.names))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("end:   %v", end)
	for name := range end.names {
		if !start.names[name] {
			t.Logf("new series (a status code first seen during the run): %s", name)
		}
	}
}
