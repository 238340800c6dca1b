package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/metrics-gateway/metrics_gateway/access"
	_ "github.com/metrics-gateway/metrics_gateway/caddyfile" // the metrics_gateway directive
)

func TestParseMirrorMetrics(t *testing.T) {
	text := `# HELP metrics_gateway_mirror_requests_total Copies of requests sent to a mirror.
# TYPE metrics_gateway_mirror_requests_total counter
metrics_gateway_mirror_requests_total{mirror="dns://127.0.0.1:53/mirror.bench:9095",result="dropped"} 1.3449e+04
metrics_gateway_mirror_requests_total{mirror="dns://127.0.0.1:53/mirror.bench:9095",result="failed"} 7
metrics_gateway_mirror_requests_total{mirror="dns://127.0.0.1:53/mirror.bench:9095",result="ok"} 8656
metrics_gateway_mirror_requests_total{mirror="dns://127.0.0.1:53/mirror.bench:9095",result="timeout"} 256
metrics_gateway_mirror_requests_total_other{result="ok"} 99
# TYPE metrics_gateway_mirror_in_flight gauge
metrics_gateway_mirror_in_flight{mirror="dns://127.0.0.1:53/mirror.bench:9095"} 256
# TYPE metrics_gateway_grpc_buffered_bytes gauge
metrics_gateway_grpc_buffered_bytes{backend="distributor"} 1.6777216e+07
metrics_gateway_grpc_buffered_bytes{backend="mirror"} 65536
caddy_http_requests_total{result="ok"} 5
`
	c, err := parseMirrorMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := mirrorCounts{mirrorResults: mirrorResults{OK: 8656, Failed: 7, Dropped: 13449, Timeout: 256}, InFlight: 256, Buffered: 16842752}
	if c != want {
		t.Errorf("parsed %+v, want %+v", c, want)
	}
	earlier := mirrorCounts{mirrorResults: mirrorResults{OK: 6, Dropped: 449}, InFlight: 3}
	if d := want.sub(earlier); d != (mirrorCounts{mirrorResults: mirrorResults{OK: 8650, Failed: 7, Dropped: 13000, Timeout: 256}, InFlight: 256, Buffered: 16842752}) {
		t.Errorf("difference %+v", d)
	}
}

// TestMirrorAndPolicyConfigs renders the mirror and policies systems'
// Caddyfiles and adapts them with the module's Caddyfile adapter.
func TestMirrorAndPolicyConfigs(t *testing.T) {
	cfg, err := parseFlags([]string{"-caddy", "/bin/true", "-phases", "mirror,policies"})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{cfg: cfg, info: standinsInfo{DNS: "127.0.0.1:5353"}, mirror: standinsInfo{DNS: "127.0.0.1:5354", MirrorGRPCPort: 9096, HungGRPCPort: 9097}}
	if e.policies, e.auth, err = policyLines(20); err != nil {
		t.Fatal(err)
	}
	enc, basic := strings.CutPrefix(e.auth, "Basic ")
	b, err := base64.StdEncoding.DecodeString(enc)
	if !basic || err != nil {
		t.Fatalf("auth %q: want Basic and base64: %v", e.auth, err)
	}
	user, pass, ok := strings.Cut(string(b), ":")
	if !ok || user != benchTenant || !strings.Contains(e.policies, access.HashToken(pass)) {
		t.Fatalf("auth %q: user %q, and its token's hash in the policies: %v", e.auth, user, strings.Contains(e.policies, access.HashToken(pass)))
	}
	dir := t.TempDir()
	for sys, want := range map[string][]string{
		sysGateway:             {`"default_tenant":"bench"`},
		sysGatewayMirror:       {`"mirrors":[{"max_in_flight":256,"refresh":5000000000,"timeout":10000000000,"url":["dns://127.0.0.1:5354/mirror.bench:9096"]}]`},
		sysGatewayMirrorHung:   {`"url":["dns://127.0.0.1:5354/mirror-hung.bench:9097"]`},
		sysGatewayMirrorDown:   {`"url":["dns://127.0.0.1:5354/mirror-down.bench:9096"]`},
		sysGatewayMirrorDownR0: {`"mirrors":[{"max_in_flight":256,"refresh":5000000000,"retries":0,"timeout":10000000000,"url":["dns://127.0.0.1:5354/mirror-down.bench:9096"]}]`},
		sysGatewayPolicies:     {`"access_policies":{"policies":[{"name":"other-0"`, `"name":"bench-writer","scopes":["metrics:write"],"tenants":["bench"]`},
	} {
		data := tmplData{Dir: dir, Port: 8000, Admin: 2019, DNS: e.info.DNS, Name: dnsName, GRPCPort: 9095}
		data.Extra, data.NoDefaultTenant = e.extraLines(sys)
		p := filepath.Join(dir, sys+".Caddyfile")
		if err := writeTemplate(p, gatewayConf, data); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(p)
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(b, map[string]any{"filename": p})
		if err != nil {
			t.Fatalf("%s: %v\n%s", sys, err, b)
		}
		for _, w := range want {
			if !strings.Contains(string(out), w) {
				t.Errorf("%s adapts without %s:\n%s", sys, w, out)
			}
		}
		if sys == sysGatewayPolicies {
			if !json.Valid(out) || strings.Count(string(out), `"name":"other-`) != 20 || strings.Contains(string(out), "default_tenant") {
				t.Errorf("policies: want 20 other policies and no default_tenant:\n%.2000s", out)
			}
		}
	}
}

func TestPoliciesOrder(t *testing.T) {
	var got []string
	for rep := 1; rep <= 4; rep++ {
		got = append(got, policiesOrder(rep)...)
	}
	want := "gateway gateway-policies gateway-policies gateway gateway gateway-policies gateway-policies gateway"
	if strings.Join(got, " ") != want {
		t.Errorf("order %v, want %s", got, want)
	}
}

// TestMirrorTargets feeds the mirror phase's report made-up runs and checks
// the comparison lines.
func TestMirrorTargets(t *testing.T) {
	cfg, err := parseFlags([]string{"-caddy", "/bin/true", "-out", t.TempDir(), "-phases", "mirror"})
	if err != nil {
		t.Fatal(err)
	}
	r := &report{cfg: cfg, Started: time.Now(), Finished: time.Now()}
	add := func(sys string, rep int, p50, p99, cpu, rss float64, failed int64, ok, fail, timeout, dropped, in0, in1, got int64) {
		r.add(sample{Phase: "mirror", System: sys, Body: 2000, Rep: rep, Requests: 1000, P50US: p50 * 1000, P99US: p99 * 1000,
			CPUPer1k: cpu, PeakRSSMiB: rss, Non2xx: failed, PerStandin: []int64{300, 300, 400}, BodyBytes: 42569,
			mirrorResults: mirrorResults{OK: ok, Failed: fail, Timeout: timeout, Dropped: dropped}, MirrorInFlightStart: in0, MirrorInFlightEnd: in1, MirrorReceived: got,
			MirrorBufferedEnd: in1*64<<10 + int64(rep-1)*1000})
	}
	for rep, v := range []float64{1.0, 1.2, 1.1} {
		add(sysGateway, rep+1, v, 10*v, 0.1*v, 60+v, 0, 0, 0, 0, 0, 0, 0, 0)
		add(sysGatewayMirror, rep+1, v+0.05, 10*v+0.5, 0.14*v, 62, 0, 1002, 0, 0, 0, 0, 0, 1002)
		add(sysGatewayMirrorHung, rep+1, v, 13, 0.09, 90, 0, 0, 0, 256, 744, 256, 256, 0)
		add(sysGatewayMirrorDown, rep+1, v, 11.5, 0.11, 70, 1, 0, 990, 0, 10, 0, 0, 0)
	}
	wantInReport(t, r.markdown(),
		"3 rounds alternating gateway → gateway-mirror → gateway-mirror-hung → gateway-mirror-down → gateway-mirror-down-r0",
		"| gateway-mirror | healthy | 0 | 1.15 | 11.50 | 0 | 0.154 | 1.40× | 62.0 |",
		"| gateway-mirror-hung | hung (answers after 30 s) | 0 | 1.10 | 13.00 | 0 | 0.090 | 0.82× | 90.0 | 0.0 | 0 / 0 / 768 / 2232 | 256 | 0 |",
		"| gateway-mirror: client p50 within the run-to-run spread without a mirror | 1.15 ms (runs 1.05 1.25 1.15) vs gateway 1.10 ms (runs 1.00 1.20 1.10; 1.00–1.20) | yes |",
		"| gateway-mirror: client p99 within the run-to-run spread without a mirror | 11.50 ms (runs 10.50 12.50 11.50) vs gateway 11.00 ms (runs 10.00 12.00 11.00; 10.00–12.00) | yes |",
		"| gateway-mirror: gateway CPU per request ≤ 1.5× without a mirror | 0.154 vs 0.110 CPU-s / 1k req = 1.40×",
		"| gateway-mirror: every copy counted (results + change of in flight = pushes to the primary, + ≤ 1 per connection cut off by wrk's stop) | 3006 copies for 3000 pushes; 0 not delivered: 0 failed, 0 timed out, 0 dropped | yes |",
		"| gateway-mirror-hung: client p99 ≤ 1.1× without a mirror | 13.00 vs 11.00 ms = 1.18× (runs 13.00 13.00 13.00 vs 10.00 12.00 11.00) | **no** |",
		"| gateway-mirror-hung: 0 client failures | 0 of 3000 | yes |",
		"| gateway-mirror-hung: peak RSS ≤ gateway's without a mirror + max_in_flight × body | 90.0 MiB ≤ 61.1 + 256 × 42569 B (10.4 MiB) = 71.5 MiB | **no** |",
		"| gateway-mirror-hung: every copy counted (results + change of in flight = pushes to the primary, + ≤ 1 per connection cut off by wrk's stop) | 3000 copies for 3000 pushes; 3000 not delivered: 0 failed, 768 timed out, 2232 dropped | yes |",
		"| gateway-mirror-down: client p99 ≤ 1.1× without a mirror | 11.50 vs 11.00 ms = 1.05×",
		"| gateway-mirror-down: 0 client failures | 3 of 3000 | **no** |",
		"| gateway-mirror-down: peak RSS ≤ gateway's without a mirror + max_in_flight × body | 70.0 MiB ≤ 61.1 + 256 × 42569 B (10.4 MiB) = 71.5 MiB | yes |",
		"| gateway-mirror-down: bodies held by copies at the end ≤ max_in_flight × the body's buffer (the bound docs/mirroring.md states) | 0.0 MiB (`metrics_gateway_grpc_buffered_bytes`, 0 copies in flight) ≤ 256 × 64 KiB = 16.0 MiB | yes |",
		// the most of the runs: 2000 bytes over the bound in the third
		"| gateway-mirror-hung: bodies held by copies at the end ≤ max_in_flight × the body's buffer (the bound docs/mirroring.md states) | 16.0 MiB (`metrics_gateway_grpc_buffered_bytes`, 256 copies in flight) ≤ 256 × 64 KiB = 16.0 MiB | **no** |",
	)
}

// TestPoliciesTargets: the policies phase's report compares CPU per request
// and p99 with the gateway's run-to-run spread.
func TestPoliciesTargets(t *testing.T) {
	cfg, err := parseFlags([]string{"-caddy", "/bin/true", "-out", t.TempDir(), "-phases", "policies", "-repeats", "4"})
	if err != nil {
		t.Fatal(err)
	}
	r := &report{cfg: cfg, Started: time.Now(), Finished: time.Now()}
	for rep, v := range []float64{0.100, 0.120, 0.110, 0.130} {
		r.add(sample{Phase: "policies", System: sysGateway, Body: 2000, Rep: rep + 1, Requests: 100, CPUPer1k: v, P99US: 10000 * v / 0.1})
		r.add(sample{Phase: "policies", System: sysGatewayPolicies, Body: 2000, Rep: rep + 1, Requests: 100, CPUPer1k: v + 0.012, P99US: 14000})
	}
	wantInReport(t, r.markdown(),
		"4 rounds alternating gateway → gateway-policies",
		"| gateway-policies | 0 | 0.00 | 14.00 | 0 | 0.127 | 0.112 0.132 0.122 0.142 | 0.0 | 0, 0 |",
		"| access_policies: CPU per request change ≤ the run-to-run spread | 0.127 vs 0.115 CPU-s / 1k req: +0.012 (+10.4 %); spread 0.030 (the larger range over runs: gateway 0.100–0.130, gateway-policies 0.112–0.142) | yes |",
		"| access_policies: p99 change ≤ the run-to-run spread | 14.00 vs 11.50 ms: +2.50 (+21.7 %); spread 3.00 (the larger range over runs: gateway 10.00–13.00, gateway-policies 14.00–14.00) | yes |",
		"| access_policies: every push accepted (a refused credential is a 401) | 0 failed of 400 | yes |",
	)
}
