package main

import (
	"image/png"
	"os"
	"path/filepath"
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

func TestReadStatSelf(t *testing.T) {
	st, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.ppid != os.Getppid() {
		t.Errorf("ppid %d, want %d", st.ppid, os.Getppid())
	}
	if statusField(os.Getpid(), "VmHWM:") <= 0 {
		t.Error("VmHWM not read")
	}
}

func TestTemplatesRender(t *testing.T) {
	dir := t.TempDir()
	data := tmplData{Dir: dir, Port: 8000, Admin: 2019, DNS: "127.0.0.1:5353", Name: dnsName,
		IPs: []string{"127.0.0.2", "127.0.0.3"}, HTTPPort: 8080, GRPCPort: 9095}
	for name, tmpl := range map[string]string{
		"nginx.conf": nginxKeepaliveConf, "helm.conf": nginxHelmConf,
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
	b, _ = os.ReadFile(filepath.Join(dir, "gw.Caddyfile"))
	if !strings.Contains(string(b), "dns://127.0.0.1:5353/distributors.bench:9095") {
		t.Errorf("gateway Caddyfile target wrong:\n%s", b)
	}
}

func TestReportAndChart(t *testing.T) {
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
	md := r.markdown()
	for _, want := range []string{"## Targets (issue 5)", "| gateway | 2000 | 1402 |", "balance max/mean"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	path := filepath.Join(cfg.out, "chart.png")
	if err := r.chart(path); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Fatalf("chart is not a PNG: %v", err)
	}
}
