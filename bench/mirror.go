package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/metrics-gateway/metrics_gateway/access"
	"github.com/metrics-gateway/metrics_gateway/grpcpush"
)

// The mirror phase: the gateway alone, then with a mirror to a second
// cluster of stand-ins that works, that holds every copy (mirrorHang, longer
// than the mirror's timeout), and that refuses connections. Every system
// gets the same load; the question is what the mirror costs the clients
// (nothing, whatever the mirror does) and the gateway (one more call per
// push, no copy of the body; at most max_in_flight bodies held). The last
// system is the refused mirror with `retries 0`: by default a failed copy
// is tried twice more, with grpc-go's backoff in between.
var mirrorSystems = []string{sysGateway, sysGatewayMirror, sysGatewayMirrorHung, sysGatewayMirrorDown, sysGatewayMirrorDownR0}

// mirrorKinds say what each mirror system's mirror does.
var mirrorKinds = map[string]string{
	sysGateway:             "none",
	sysGatewayMirror:       "healthy",
	sysGatewayMirrorHung:   "hung (answers after 30 s)",
	sysGatewayMirrorDown:   "down (connection refused)",
	sysGatewayMirrorDownR0: "down, `retries 0`",
}

// The policies phase: the gateway without and with access_policies, in
// alternating order (ABBA), so that neither always runs first.
var policiesSystems = []string{sysGateway, sysGatewayPolicies}

// policiesOrder is the order of round rep (1-based).
func policiesOrder(rep int) []string {
	if rep%2 == 0 {
		return []string{policiesSystems[1], policiesSystems[0]}
	}
	return policiesSystems
}

// mirrorStandins is the number of stand-ins of each mirror cluster.
const mirrorStandins = 2

// otherPolicies is how many policies besides the bench tenant's the
// gateway-policies system has, so that the token lookup is among many.
const otherPolicies = 1000

// extraLines are a system's lines of the metrics_gateway block, and whether
// it must go without default_tenant.
func (e *env) extraLines(name string) (string, bool) {
	switch name {
	case sysGatewayMirror:
		return e.mirrorLines(mirrorName, e.mirror.MirrorGRPCPort), false
	case sysGatewayMirrorHung:
		return e.mirrorLines(mirrorHungName, e.mirror.HungGRPCPort), false
	case sysGatewayMirrorDown:
		// The healthy mirror's port, on an address nothing listens on.
		return e.mirrorLines(mirrorDownName, e.mirror.MirrorGRPCPort), false
	case sysGatewayMirrorDownR0:
		return e.mirrorLines(mirrorDownName, e.mirror.MirrorGRPCPort, "retries       0"), false
	case sysGatewayPolicies:
		return e.policies, true
	}
	return "", false
}

// mirrorLines is a mirror block for the cluster name answers, with extra
// lines.
func (e *env) mirrorLines(name string, port int, extra ...string) string {
	var more string
	for _, l := range extra {
		more += "\n\t\t\t" + l
	}
	return fmt.Sprintf(`		mirror dns://%s/%s:%d {
			refresh       5s
			max_in_flight %d
			timeout       %s%s
		}`, e.mirror.DNS, name, port, e.cfg.mirrorMaxInFlight, e.cfg.mirrorTimeout, more)
}

// policyLines makes gateway-policies' access_policies block: others
// policies granting metrics:write and metrics:read on a tenant each, with a
// token each, then one granting metrics:write on the bench tenant, whose
// token it returns with the Authorization header the clients send.
func policyLines(others int) (block, auth string, err error) {
	var b strings.Builder
	b.WriteString("\t\taccess_policies {\n")
	policy := func(name, tenant, scopes, hash string) {
		fmt.Fprintf(&b, "\t\t\tpolicy %s {\n\t\t\t\ttenants %s\n\t\t\t\tscopes %s\n\t\t\t\ttoken %s\n\t\t\t}\n", name, tenant, scopes, hash)
	}
	for i := range others {
		_, hash, err := access.NewToken()
		if err != nil {
			return "", "", err
		}
		policy(fmt.Sprintf("other-%d", i), fmt.Sprintf("tenant-%d", i), "metrics:write metrics:read", hash)
	}
	token, hash, err := access.NewToken()
	if err != nil {
		return "", "", err
	}
	policy("bench-writer", benchTenant, "metrics:write", hash)
	b.WriteString("\t\t}")
	return b.String(), "Basic " + base64.StdEncoding.EncodeToString([]byte(benchTenant+":"+token)), nil
}

// runMirror runs the mirror phase: count-only stand-ins (both clusters),
// -connections keep-alive connections with -mirror-delay ms pause after
// each answer, -mirror-duration per run, the systems alternating.
func (e *env) runMirror(ctx context.Context, rep *report, body int) {
	for r := 1; r <= e.cfg.repeats; r++ {
		for _, sys := range mirrorSystems {
			rep.add(e.measure(ctx, runSpec{phase: "mirror", system: sys, body: body, rep: r, work: workCount, conns: e.cfg.connections,
				delayMS: e.cfg.mirrorDelayMS, duration: e.cfg.mirrorDuration}))
		}
	}
}

// runPolicies runs the policies phase: count-only stand-ins,
// -connections keep-alive connections, the two systems in ABBA order.
func (e *env) runPolicies(ctx context.Context, rep *report, body int) {
	for r := 1; r <= e.cfg.repeats; r++ {
		for _, sys := range policiesOrder(r) {
			rep.add(e.measure(ctx, runSpec{phase: "policies", system: sys, body: body, rep: r, work: workCount, conns: e.cfg.connections}))
		}
	}
}

// hasMirror says a system's gateway has a mirror.
func hasMirror(sys string) bool {
	return sys == sysGatewayMirror || sys == sysGatewayMirrorHung || sys == sysGatewayMirrorDown || sys == sysGatewayMirrorDownR0
}

// mirrorResults count a gateway's copies by result
// (metrics_gateway_mirror_requests_total).
type mirrorResults struct {
	OK      int64 `json:"mirror_ok,omitempty"`
	Failed  int64 `json:"mirror_failed,omitempty"`
	Timeout int64 `json:"mirror_timeout,omitempty"`
	Dropped int64 `json:"mirror_dropped,omitempty"`
}

// add adds o's copies to m's.
func (m *mirrorResults) add(o mirrorResults) {
	m.OK += o.OK
	m.Failed += o.Failed
	m.Timeout += o.Timeout
	m.Dropped += o.Dropped
}

// total is the copies of every result.
func (m mirrorResults) total() int64 { return m.OK + m.Failed + m.Timeout + m.Dropped }

// mirrorCounts are a gateway's mirror metrics: copies by result and copies
// in flight (metrics_gateway_mirror_in_flight), summed over its mirrors,
// and the body bytes its backends hold (metrics_gateway_grpc_buffered_bytes,
// summed over them: the copies' bodies once no push is in flight).
type mirrorCounts struct {
	mirrorResults
	InFlight int64
	Buffered int64
}

// scrapeMirror reads a gateway's mirror metrics from Caddy's admin /metrics.
func scrapeMirror(ctx context.Context, admin string) (mirrorCounts, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return mirrorCounts{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return mirrorCounts{}, fmt.Errorf("GET /metrics: status %d", resp.StatusCode)
	}
	return parseMirrorMetrics(resp.Body)
}

// parseMirrorMetrics reads the mirror series of a Prometheus text
// exposition.
func parseMirrorMetrics(r io.Reader) (mirrorCounts, error) {
	var c mirrorCounts
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		name, rest, ok := strings.Cut(line, "{")
		if !ok || (name != "metrics_gateway_mirror_requests_total" && name != "metrics_gateway_mirror_in_flight" && name != "metrics_gateway_grpc_buffered_bytes") {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			return c, fmt.Errorf("%q: %w", line, err)
		}
		n := int64(v)
		switch name {
		case "metrics_gateway_mirror_in_flight":
			c.InFlight += n
			continue
		case "metrics_gateway_grpc_buffered_bytes":
			c.Buffered += n
			continue
		}
		switch {
		case strings.Contains(labels, `result="ok"`):
			c.OK += n
		case strings.Contains(labels, `result="failed"`):
			c.Failed += n
		case strings.Contains(labels, `result="dropped"`):
			c.Dropped += n
		case strings.Contains(labels, `result="timeout"`):
			c.Timeout += n
		}
	}
	return c, sc.Err()
}

// sub is c - o, the gauges left as they are.
func (c mirrorCounts) sub(o mirrorCounts) mirrorCounts {
	d := mirrorResults{OK: c.OK - o.OK, Failed: c.Failed - o.Failed, Timeout: c.Timeout - o.Timeout, Dropped: c.Dropped - o.Dropped}
	return mirrorCounts{mirrorResults: d, InFlight: c.InFlight, Buffered: c.Buffered}
}

// mirrorAccount is what a run's copies add up to: the copies started
// during it (each ends as a result, dropped ones at once, or is still in
// flight at its end: results + in flight at the end - in flight at the
// start), against the pushes that reached the primary stand-ins.
func mirrorAccount(s sample) (copies, primary int64) {
	return s.mirrorResults.total() + s.MirrorInFlightEnd - s.MirrorInFlightStart, sumOf(s.PerStandin)
}

// sumOf is the sum of v.
func sumOf(v []int64) (n int64) {
	for _, x := range v {
		n += x
	}
	return n
}

// runsOf returns the successful runs of a cell.
func (r *report) runsOf(phase, sys string, body int) []sample {
	var out []sample
	for _, s := range r.Samples {
		if s.Phase == phase && s.System == sys && s.Body == body && s.Err == "" {
			out = append(out, s)
		}
	}
	return out
}

// spread is the lowest and highest of a value over runs.
func spread(runs []sample, get func(sample) float64) (lo, hi float64) {
	for i, s := range runs {
		v := get(s)
		if i == 0 || v < lo {
			lo = v
		}
		if i == 0 || v > hi {
			hi = v
		}
	}
	return lo, hi
}

// perRun lists a value run by run: "1.20 1.31 1.25".
func perRun(runs []sample, format string, get func(sample) float64) string {
	parts := make([]string, len(runs))
	for i, s := range runs {
		parts[i] = fmt.Sprintf(format, get(s))
	}
	return strings.Join(parts, " ")
}

func p50ms(s sample) float64    { return s.P50US / 1000 }
func p99ms(s sample) float64    { return s.P99US / 1000 }
func cpuOf(s sample) float64    { return s.CPUPer1k }
func mib(bytes float64) float64 { return bytes / (1 << 20) }

// mirrorMarkdown is the mirror phase's table.
func (r *report) mirrorMarkdown(body int) string {
	if !r.cfg.phases["mirror"] {
		return ""
	}
	var b strings.Builder
	pause := ifPaused(r.cfg.mirrorDelayMS, ", %d ms pause after each answer")
	fmt.Fprintf(&b, "## Mirror: %d keep-alive connections%s, body %d, stand-ins count, %s per run, medians of %d runs\n\n",
		r.cfg.connections, pause, body, r.cfg.mirrorDuration, r.cfg.repeats)
	fmt.Fprintf(&b, "Mirror: `max_in_flight %d`, `timeout %s`, to %d more stand-ins (`%s`, in a stand-ins process of their own on CPU %d), to %d that answer each copy %s late (`%s`), or to `%s` (%s: nothing listens there; the last system with `retries 0`).\n\n",
		r.cfg.mirrorMaxInFlight, r.cfg.mirrorTimeout, mirrorStandins, mirrorName, r.cfg.mirrorStandinsCPU(), mirrorStandins, mirrorHang, mirrorHungName, mirrorDownName, mirrorDownIP)
	b.WriteString("| system | mirror | req/s | p50 ms | p99 ms | failed requests | proxy CPU-s / 1k req | CPU ÷ gateway's | peak RSS MiB | anon RSS at the end MiB | copies ok / failed / timeout / dropped | in flight at the end | copies the mirror stand-ins got | busy %: load core, proxy core |\n" +
		"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|\n")
	g := r.median("mirror", sysGateway, body)
	for _, sys := range mirrorSystems {
		s := r.median("mirror", sys, body)
		if s == nil {
			fmt.Fprintf(&b, "| %s | %s | failed (%d runs) ||||||||||||\n", sys, mirrorKinds[sys], r.failures("mirror", sys, body))
			continue
		}
		ratio := "—"
		if g != nil && g.CPUPer1k > 0 && sys != sysGateway {
			ratio = fmt.Sprintf("%.2f×", s.CPUPer1k/g.CPUPer1k)
		}
		copies, end, got := "—", "—", "—"
		if hasMirror(sys) {
			c := s.mirrorResults
			copies = fmt.Sprintf("%d / %d / %d / %d", c.OK, c.Failed, c.Timeout, c.Dropped)
			end = fmt.Sprint(s.MirrorInFlightEnd)
		}
		if sys == sysGatewayMirror || sys == sysGatewayMirrorHung {
			got = fmt.Sprint(s.MirrorReceived) // a refused mirror has no stand-ins
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f | %.2f | %.2f | %d | %.3f | %s | %.1f | %.1f | %s | %s | %s | %.0f, %.0f |\n", sys, mirrorKinds[sys], s.RPS, s.P50US/1000, s.P99US/1000,
			s.Non2xx+s.SocketErrors, s.CPUPer1k, ratio, s.PeakRSSMiB, s.AnonRSSMiB, copies, end, got, s.LoadCorePct, s.ProxyCorePct)
	}
	b.WriteString("\nFailed requests, copies and copies received are summed over the runs (copies: `metrics_gateway_mirror_requests_total` over the measured seconds, from the gateway's admin `/metrics`); the other columns are medians; in flight at the end is the median of `metrics_gateway_mirror_in_flight`. A proxy core busier than the proxy's own CPU % (proxy CPU-s / 1k req × req/s) ran other work too.\n\n")
	return b.String()
}

// mirrorTargets checks the mirror phase's targets.
func (r *report) mirrorTargets(body int) string {
	if !r.cfg.phases["mirror"] {
		return ""
	}
	var b strings.Builder
	g := r.median("mirror", sysGateway, body)
	gRuns := r.runsOf("mirror", sysGateway, body)
	if g == nil {
		return ""
	}
	bound := float64(r.cfg.mirrorMaxInFlight) * float64(g.BodyBytes)
	for _, sys := range mirrorSystems[1:] {
		s := r.median("mirror", sys, body)
		if s == nil {
			fmt.Fprintf(&b, "| %s: measured | every run failed | **no** |\n", sys)
			continue
		}
		runs := r.runsOf("mirror", sys, body)
		if sys == sysGatewayMirror {
			for _, q := range []struct {
				name string
				get  func(sample) float64
			}{{"p50", p50ms}, {"p99", p99ms}} {
				lo, hi := spread(gRuns, q.get)
				v := q.get(*s)
				fmt.Fprintf(&b, "| %s: client %s within the run-to-run spread without a mirror | %.2f ms (runs %s) vs gateway %.2f ms (runs %s; %.2f–%.2f) | %s |\n",
					sys, q.name, v, perRun(runs, "%.2f", q.get), q.get(*g), perRun(gRuns, "%.2f", q.get), lo, hi, verdict(v <= hi))
			}
			ratio := s.CPUPer1k / g.CPUPer1k
			fmt.Fprintf(&b, "| %s: gateway CPU per request ≤ 1.5× without a mirror | %.3f vs %.3f CPU-s / 1k req = %.2f× (runs %s vs %s) | %s |\n",
				sys, s.CPUPer1k, g.CPUPer1k, ratio, perRun(runs, "%.3f", cpuOf), perRun(gRuns, "%.3f", cpuOf), verdict(ratio <= 1.5))
		} else {
			ratio := s.P99US / g.P99US
			fmt.Fprintf(&b, "| %s: client p99 ≤ 1.1× without a mirror | %.2f vs %.2f ms = %.2f× (runs %s vs %s) | %s |\n",
				sys, s.P99US/1000, g.P99US/1000, ratio, perRun(runs, "%.2f", p99ms), perRun(gRuns, "%.2f", p99ms), verdict(ratio <= 1.1))
			failed := s.Non2xx + s.SocketErrors
			fmt.Fprintf(&b, "| %s: 0 client failures | %d of %d | %s |\n", sys, failed, s.Requests, verdict(failed == 0))
			peakBound := g.PeakRSSMiB + mib(bound)
			fmt.Fprintf(&b, "| %s: peak RSS ≤ gateway's without a mirror + max_in_flight × body | %.1f MiB ≤ %.1f + %d × %d B (%.1f MiB) = %.1f MiB | %s |\n",
				sys, s.PeakRSSMiB, g.PeakRSSMiB, r.cfg.mirrorMaxInFlight, g.BodyBytes, mib(bound), peakBound, verdict(s.PeakRSSMiB <= peakBound))
			held := float64(r.cfg.mirrorMaxInFlight) * float64(grpcpush.BufferBytes(g.BodyBytes))
			fmt.Fprintf(&b, "| %s: bodies held by copies at the end ≤ max_in_flight × the body's buffer (the bound docs/mirroring.md states) | %.1f MiB (`metrics_gateway_grpc_buffered_bytes`, %d copies in flight) ≤ %d × %d KiB = %.1f MiB | %s |\n",
				sys, mib(float64(s.MirrorBufferedEnd)), s.MirrorInFlightEnd, r.cfg.mirrorMaxInFlight, grpcpush.BufferBytes(g.BodyBytes)>>10, mib(held), verdict(float64(s.MirrorBufferedEnd) <= held))
		}
		var copies, primary int64
		for _, run := range runs {
			c, p := mirrorAccount(run)
			copies, primary = copies+c, primary+p
		}
		// A push wrk cut off when it stopped may have been copied without
		// reaching the primary: at most one per connection and run.
		slack := int64(r.cfg.connections * len(runs))
		c := s.mirrorResults
		fmt.Fprintf(&b, "| %s: every copy counted (results + change of in flight = pushes to the primary, + ≤ 1 per connection cut off by wrk's stop) | %d copies for %d pushes; %d not delivered: %d failed, %d timed out, %d dropped | %s |\n",
			sys, copies, primary, c.total()-c.OK, c.Failed, c.Timeout, c.Dropped, verdict(primary > 0 && copies >= primary && copies <= primary+slack))
	}
	return b.String()
}

// policiesMarkdown is the policies phase's table.
func (r *report) policiesMarkdown(body int) string {
	if !r.cfg.phases["policies"] {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Access policies: %d keep-alive connections, body %d, stand-ins count, %s per run, medians of %d runs (order ABBA)\n\n",
		r.cfg.connections, body, r.cfg.duration, r.cfg.repeats)
	fmt.Fprintf(&b, "gateway-policies: `access_policies` with %d policies (one granting `metrics:write` on `%s`, %d others a tenant each), pushes with `Authorization: Basic` (tenant:token) and no `X-Scope-OrgID`; gateway: `default_tenant %s`, pushes with `X-Scope-OrgID`.\n\n",
		otherPolicies+1, benchTenant, otherPolicies, benchTenant)
	b.WriteString("| system | req/s | p50 ms | p99 ms | failed requests | proxy CPU-s / 1k req | runs | peak RSS MiB | busy %: load core, proxy core |\n|---|---:|---:|---:|---:|---:|---|---:|---|\n")
	for _, sys := range policiesSystems {
		s := r.median("policies", sys, body)
		if s == nil {
			fmt.Fprintf(&b, "| %s | failed (%d runs) ||||||||\n", sys, r.failures("policies", sys, body))
			continue
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.2f | %.2f | %d | %.3f | %s | %.1f | %.0f, %.0f |\n", sys, s.RPS, s.P50US/1000, s.P99US/1000,
			s.Non2xx+s.SocketErrors, s.CPUPer1k, perRun(r.runsOf("policies", sys, body), "%.3f", cpuOf), s.PeakRSSMiB, s.LoadCorePct, s.ProxyCorePct)
	}
	b.WriteString("\n")
	return b.String()
}

// policiesTargets checks that access_policies changes CPU per request and
// p99 (medians) by no more than the run-to-run spread: the larger of the two
// systems' ranges (highest - lowest) over their runs.
func (r *report) policiesTargets(body int) string {
	if !r.cfg.phases["policies"] {
		return ""
	}
	g, p := r.median("policies", sysGateway, body), r.median("policies", sysGatewayPolicies, body)
	if g == nil || p == nil {
		return ""
	}
	var b strings.Builder
	gRuns, pRuns := r.runsOf("policies", sysGateway, body), r.runsOf("policies", sysGatewayPolicies, body)
	for _, q := range []struct {
		name, format, unit string
		get                func(sample) float64
	}{{"CPU per request", "%.3f", "CPU-s / 1k req", cpuOf}, {"p99", "%.2f", "ms", p99ms}} {
		// The spread: the larger of the two systems' ranges over their runs.
		lo, hi := spread(gRuns, q.get)
		plo, phi := spread(pRuns, q.get)
		v, base := q.get(*p), q.get(*g)
		f := q.format
		fmt.Fprintf(&b, "| access_policies: %s change ≤ the run-to-run spread | "+f+" vs "+f+" %s: %+"+f[1:]+" (%+.1f %%); spread "+f+" (the larger range over runs: gateway "+f+"–"+f+", gateway-policies "+f+"–"+f+") | %s |\n",
			q.name, v, base, q.unit, v-base, 100*(v/base-1), max(hi-lo, phi-plo), lo, hi, plo, phi, verdict(math.Abs(v-base) <= max(hi-lo, phi-plo)))
	}
	failed := p.Non2xx + p.SocketErrors
	fmt.Fprintf(&b, "| access_policies: every push accepted (a refused credential is a 401) | %d failed of %d | %s |\n", failed, p.Requests, verdict(failed == 0))
	return b.String()
}
