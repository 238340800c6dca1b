package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMedianAndBalance(t *testing.T) {
	if got := medianOf([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median odd = %v", got)
	}
	if got := medianOf([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median even = %v", got)
	}
	if got := maxOverMean([]int64{2, 1, 1}); got != 1.5 {
		t.Errorf("max/mean 2:1:1 = %v, want 1.5", got)
	}
	if got := maxOverMean([]int64{0, 0, 0}); got != 0 {
		t.Errorf("max/mean of nothing = %v", got)
	}
}

// TestProcSelf reads the test's own process: its parent, CPU time and
// memory, the machine's per-CPU times and the load average.
func TestProcSelf(t *testing.T) {
	spin(30 * time.Millisecond) // some CPU time to read
	st, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.ppid != os.Getppid() {
		t.Errorf("ppid %d, want %d", st.ppid, os.Getppid())
	}
	if st.cpuSeconds <= 0 {
		t.Errorf("CPU time %v s, want > 0", st.cpuSeconds)
	}
	if got := treeCPUSeconds(os.Getpid()); got < st.cpuSeconds {
		t.Errorf("tree CPU time %v s < the process's own %v s", got, st.cpuSeconds)
	}
	m := treeMemKiB(os.Getpid())
	if m.peak <= 0 || m.rss <= 0 || m.rss > m.peak || m.anon <= 0 || m.file <= 0 {
		t.Errorf("memory read %+v KiB: want peak >= rss > 0, anon and file > 0", m)
	}
	if tree := procTree(os.Getppid()); !slices.Contains(tree, os.Getpid()) {
		t.Errorf("the parent's tree %v lacks this process %d", tree, os.Getpid())
	}
	before := cpuTimes()
	if len(before) == 0 {
		t.Fatal("no CPU in /proc/stat")
	}
	spin(30 * time.Millisecond)
	after := cpuTimes()
	busy := false
	for cpu := range before {
		p := busyPct(before, after, int(cpu))
		if p < 0 || p > 100 {
			t.Errorf("cpu%d busy %v %%", cpu, p)
		}
		busy = busy || p > 0
	}
	if !busy {
		t.Errorf("no CPU busy while the test spun: %v -> %v", before, after)
	}
	if l := strings.Fields(loadAvg()); len(l) != 3 {
		t.Errorf("load average %q, want three fields", loadAvg())
	}
}

// spin keeps a CPU busy for d.
func spin(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
	}
}

// TestBusyPct: the busy share of a CPU between two snapshots of busy and
// total seconds, kept within 0-100 % when float sums make it stray.
func TestBusyPct(t *testing.T) {
	before := map[int64][2]float64{0: {10, 100}}
	for _, c := range []struct {
		after [2]float64
		want  float64
	}{
		{[2]float64{15, 110}, 50},
		{[2]float64{20, 110}, 100},
		{[2]float64{21, 110}, 100},      // busy grew more than total: 110 % clamped
		{[2]float64{10 - 1e-9, 110}, 0}, // busy shrank by a rounding error: clamped
		{[2]float64{20, 100}, 0},        // no time passed
		{[2]float64{20, 90}, 0},         // nor this (a counter going back)
	} {
		if got := busyPct(before, map[int64][2]float64{0: c.after}, 0); got != c.want {
			t.Errorf("busy %v -> %v: %v %%, want %v", before[0], c.after, got, c.want)
		}
	}
	if got := busyPct(before, map[int64][2]float64{0: {15, 110}}, 1); got != 0 {
		t.Errorf("a CPU in neither snapshot: %v %%, want 0", got)
	}
}

// wantInReport fails t for each of wants that md lacks.
func wantInReport(t *testing.T, md string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestTemplatesRender(t *testing.T) {
	dir := t.TempDir()
	data := tmplData{Dir: dir, Port: 8000, Admin: 2019, DNS: "127.0.0.1:5353", Name: dnsName,
		IPs: []string{"127.0.0.2", "127.0.0.3"}, HTTPPort: 8080, GRPCPort: 9095}
	for name, tmpl := range map[string]string{
		"nginx.conf": nginxUpstreamConf, "helm.conf": nginxHelmConf,
		"rp.Caddyfile": caddyReverseProxyConf, "gw.Caddyfile": gatewayConf,
	} {
		p := filepath.Join(dir, name)
		if err := writeTemplate(p, tmpl, data); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), "<no value>") {
			t.Errorf("%s has an unfilled field:\n%s", name, b)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "nginx.conf"))
	for _, want := range []string{"server 127.0.0.2:8080;", "server 127.0.0.3:8080;", "keepalive 256;", "client_body_buffer_size 1m;"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("nginx.conf lacks %q", want)
		}
	}
	if strings.Contains(string(b), "least_conn") || strings.Contains(string(b), "max_fails") {
		t.Errorf("nginx.conf without Health has passive health:\n%s", b)
	}
	health := data
	health.Health = true
	p := filepath.Join(dir, "nginx-health.conf")
	if err := writeTemplate(p, nginxUpstreamConf, health); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(p)
	for _, want := range []string{"least_conn;", "server 127.0.0.2:8080 max_fails=3 fail_timeout=5s;", "proxy_next_upstream error timeout http_503 non_idempotent;"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("nginx.conf with Health lacks %q:\n%s", want, b)
		}
	}
	b, _ = os.ReadFile(filepath.Join(dir, "gw.Caddyfile"))
	if !strings.Contains(string(b), "dns://127.0.0.1:5353/distributors.bench:9095") {
		t.Errorf("gateway Caddyfile target wrong:\n%s", b)
	}
}

func TestReport(t *testing.T) {
	cfg, err := parseFlags([]string{"-caddy", "/bin/true", "-out", t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	r := &report{cfg: cfg, Started: time.Now(), Finished: time.Now()}
	for rep := 1; rep <= 3; rep++ {
		for i, sys := range cfg.systems {
			for _, phase := range []string{"main", "capacity", "latency", "rss"} {
				r.add(sample{Phase: phase, System: sys, Body: 2000, Rep: rep, RPS: float64(1000 + 100*i + rep),
					P50US: 1000, CPUPer1k: 0.1 * float64(i+1), PeakRSSMiB: 20, PerStandin: []int64{10, 10, 10}, MaxOverMean: 1})
			}
		}
		for _, sys := range balanceSystems(cfg.systems) {
			r.add(sample{Phase: "balance", System: sys, Body: 2000, Rep: rep, RPS: 900, PerStandin: []int64{2, 1, 1}, MaxOverMean: 1.5})
		}
	}
	r.LatencyRate = 500
	if m := r.median("main", sysGateway, 2000); m == nil || m.RPS != 1402 || m.Rep != 3 {
		t.Fatalf("median of gateway = %+v", m)
	}
	wantInReport(t, r.markdown(), "## Targets", "| gateway | 2000 | 1402 |", "balance max/mean")
}

// TestSickTargets feeds the sick phase's report made-up runs: the targets
// table must judge each target from them, and leave out systems that
// failed most requests when comparing p99s.
func TestSickTargets(t *testing.T) {
	cfg, err := parseFlags([]string{"-caddy", "/bin/true", "-out", t.TempDir(), "-phases", "sick"})
	if err != nil {
		t.Fatal(err)
	}
	r := &report{cfg: cfg, Started: time.Now(), Finished: time.Now()}
	add := func(phase, sys string, p99ms float64, per []int64, non2xx int64, out []int) {
		for rep := 1; rep <= 3; rep++ {
			r.add(sample{Phase: phase, System: sys, Body: 2000, Rep: rep, Requests: sumOf(per), P99US: p99ms * 1000,
				PerStandin: per, MaxOverMean: maxOverMean(per), CPUPer1k: 0.1, Non2xx: non2xx, TakenOut: out})
		}
	}
	add("sick-healthy", sysGateway, 10, []int64{100, 100, 100}, 0, nil)
	add("sick-healthy", sysGatewayLC, 10, []int64{100, 101, 99}, 0, nil)
	add("sick-slow", sysGateway, 24, []int64{100, 100, 100}, 0, nil)
	add("sick-slow", sysGatewayLC, 24, []int64{100, 30, 100}, 0, nil)
	add("sick-slow", sysGatewayHealth, 12, []int64{100, 1, 100}, 0, []int{0, 2, 1})
	add("sick-slow", sysNginxHealth, 23, []int64{100, 10, 100}, 0, nil)
	add("sick-slow", sysCaddyHealth, 9, []int64{1, 1, 1}, 3, nil)
	add("sick-slow", sysCaddyLC, 11, []int64{100, 5, 100}, 0, nil)
	add("sick-503", sysGatewayHealth, 10, []int64{1000, 10, 1000}, 5, []int{0, 4, 0})
	wantInReport(t, r.markdown(),
		"| slow stand-in: least_conn share ≤ 0.6× the others' mean | 0.30× | yes |",
		"| 12.00 vs 24.00 ms = 0.50× | yes |",
		"caddy-lc-health 9.00 (100 % failed, not compared)",
		"| below in 9 of 12; lost: round 1 caddy-lc 11.00 ms (gateway-health 12.00), round 2 caddy-lc 11.00 ms (gateway-health 12.00), round 3 caddy-lc 11.00 ms (gateway-health 12.00) | **no** |",
		"| slow stand-in: no healthy stand-in taken out | taken out 0 / 6 / 3 times (per stand-in, 3 runs) | **no** |",
		"| setting: unhealthy_latency (-sick-latency) above the healthy stand-ins' p99 (least_conn, healthy scenario) | 15ms vs 10.00 ms | yes |",
		"| 503 stand-in: ≤ 1 % of requests fail | 0.25 % (15 of 6030) | yes |",
		"| healthy stand-ins: least_conn max/mean ≤ 1.05 | 1.010 | yes |",
		"| gateway-health | 0 | 0.00 | 12.00 | 0 | 0.00 |",
		"measures 10s; 3 rounds alternating gateway → gateway-lc → gateway-health → nginx-health → caddy-lc → caddy-lc-health",
	)
}

func TestTakenOut(t *testing.T) {
	p := filepath.Join(t.TempDir(), "stderr.log")
	log := `{"level":"info","msg":"endpoint out: passive health check failed","backend":"distributor","endpoint":"127.0.0.3:9095"}
not json
{"level":"info","msg":"endpoint back: its failures aged out","endpoint":"127.0.0.3:9095"}
{"level":"info","msg":"endpoint out: passive health check failed","endpoint":"127.0.0.3:9095"}
{"level":"info","msg":"endpoint out: passive health check failed","endpoint":"127.0.0.2:9095","failure":"took 17ms (unhealthy_latency 15ms)"}
`
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	got, why := takenOut(p, []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"})
	if joinInts(got) != "1 / 2 / 0" {
		t.Errorf("taken out = %v, want 1 / 2 / 0", got)
	}
	if len(why) != 3 || why[2] != "127.0.0.2: took 17ms (unhealthy_latency 15ms)" {
		t.Errorf("failures = %q", why)
	}
}

// TestProfileStandins takes a profile from a control endpoint serving Go's
// pprof handler, as the stand-ins' does, and checks a profile was written.
func TestProfileStandins(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	dir := t.TempDir()
	e := &env{cfg: &config{out: dir}, info: standinsInfo{Control: strings.TrimPrefix(srv.URL, "http://")}}
	if err := e.profileStandins(context.Background(), 2*time.Second, "standins-x.pprof"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "standins-x.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b { // pprof profiles are gzipped protobuf
		t.Fatalf("not a profile: %d bytes starting %q", len(b), b[:min(len(b), 8)])
	}
}

// TestGatewayBaseNeedsItsBuild: gateway-base is a known system, and it
// needs -caddy-base, the other build it runs.
func TestGatewayBaseNeedsItsBuild(t *testing.T) {
	_, err := parseFlags([]string{"-systems", "gateway-base,gateway", "-caddy", "/bin/true"})
	if err == nil || !strings.Contains(err.Error(), "-caddy-base") {
		t.Fatalf("without -caddy-base: err = %v, want one naming -caddy-base", err)
	}
	c, err := parseFlags([]string{"-systems", "gateway-base,gateway", "-caddy", "/bin/true", "-caddy-base", "/bin/false"})
	if err != nil {
		t.Fatal(err)
	}
	if c.caddyBase != "/bin/false" || len(c.systems) != 2 || c.systems[0] != sysGatewayBase {
		t.Fatalf("parsed %q %v", c.caddyBase, c.systems)
	}
}

func TestSickLatencyFlag(t *testing.T) {
	c, err := parseFlags([]string{"-caddy", "/bin/true", "-sick-latency", "20ms"})
	if err != nil {
		t.Fatal(err)
	}
	slow, status := sickScenarios[1], sickScenarios[2]
	if got := healthWords(c.passiveHealth(slow)); got != "fail_duration 5s; max_fails 3; unhealthy_latency 20ms" {
		t.Errorf("slow scenario's passive health = %q", got)
	}
	if got := healthWords(c.passiveHealth(status)); !strings.Contains(got, "unhealthy_status 5xx") || strings.Contains(got, "latency") {
		t.Errorf("503 scenario's passive health = %q", got)
	}
	if _, err := parseFlags([]string{"-caddy", "/bin/true", "-sick-latency", "0s"}); err == nil || !strings.Contains(err.Error(), "-sick-latency") {
		t.Errorf("-sick-latency 0s: err = %v, want one naming -sick-latency", err)
	}
}
