package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

type machine struct {
	CPUs    int    `json:"cpus"`
	CPU     string `json:"cpu_model"`
	Kernel  string `json:"kernel"`
	Go      string `json:"go"`
	Nginx   string `json:"nginx"`
	Wrk     string `json:"wrk"`
	Caddy   string `json:"caddy"`
	Commit  string `json:"commit"`
	Command string `json:"command"`
	// Invocation is how the command was started (bench/run.sh sets it).
	Invocation string `json:"invocation,omitempty"`
}

type report struct {
	cfg               *config
	Machine           machine   `json:"machine"`
	Started           time.Time `json:"started"`
	Finished          time.Time `json:"finished"`
	LoadBefore        string    `json:"loadavg_before"`
	LoadAfter         string    `json:"loadavg_after"`
	Samples           []sample  `json:"samples"`
	LatencyRate       float64   `json:"latency_offered_rate"`
	LatencyDelayMS    int       `json:"latency_delay_ms"`
	ProfileRPS        float64   `json:"profile_rps"`
	PprofCPU          string    `json:"-"`
	PprofCPUCum       string    `json:"-"`
	PprofAlloc        string    `json:"-"`
	PprofAllocObjects string    `json:"-"`
	GoBench           string    `json:"-"`
	Notes             []string  `json:"notes,omitempty"`
}

func (r *report) add(s sample) { r.Samples = append(r.Samples, s) }

// render rebuilds the report of an earlier run from its results.json and
// the pprof and benchstat text files beside it.
func render(_ context.Context, cfg *config) error {
	b, err := os.ReadFile(filepath.Join(cfg.out, "results.json"))
	if err != nil {
		return err
	}
	r := &report{cfg: cfg}
	if err := json.Unmarshal(b, r); err != nil {
		return err
	}
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(cfg.out, name))
		return string(b)
	}
	r.PprofCPU, r.PprofCPUCum = read("pprof-cpu.txt"), read("pprof-cpu-cum.txt")
	r.PprofAlloc, r.PprofAllocObjects = read("pprof-alloc-space.txt"), read("pprof-alloc-objects.txt")
	if cfg.goBenchFile != "" {
		r.GoBench = read(filepath.Base(cfg.goBenchFile))
		if b, err := os.ReadFile(cfg.goBenchFile); err == nil {
			r.GoBench = string(b)
		}
	}
	return r.write()
}

func machineInfo(cfg *config) machine {
	m := machine{Go: runtime.Version(), Command: cfg.commandLine, Invocation: os.Getenv("BENCH_INVOCATION")}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "processor":
				m.CPUs++
			case "model name":
				m.CPU = strings.TrimSpace(v)
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	firstLine := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return strings.TrimSpace(line)
	}
	m.Nginx = firstLine(cfg.nginx, "-v")
	m.Wrk = strings.Fields(firstLine(cfg.wrk, "-v") + " ?")[1]
	m.Commit = firstLine("git", "describe", "--always", "--dirty", "--abbrev=12")
	if cfg.caddy != "" {
		m.Caddy = "Caddy " + strings.Fields(firstLine(cfg.caddy, "version") + " ?")[0]
	}
	return m
}

// median aggregates the successful samples of one cell: every number is the
// median over repeats, except the counts Requests, Non2xx, SocketErrors,
// TakenOut and the mirror's copies by result and received, which are summed,
// and the body bytes held at the end, the most of any run.
func (r *report) median(phase, system string, body int) *sample {
	ss := r.runsOf(phase, system, body)
	if len(ss) == 0 {
		return nil
	}
	m := ss[0]
	med := func(get func(s sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = get(s)
		}
		return medianOf(v)
	}
	m.Rep = len(ss)
	m.RPS = med(func(s sample) float64 { return s.RPS })
	m.SamplesPerSec = med(func(s sample) float64 { return s.SamplesPerSec })
	m.P50US = med(func(s sample) float64 { return s.P50US })
	m.P90US = med(func(s sample) float64 { return s.P90US })
	m.P99US = med(func(s sample) float64 { return s.P99US })
	m.MaxUS = med(func(s sample) float64 { return s.MaxUS })
	m.CPUPer1k = med(func(s sample) float64 { return s.CPUPer1k })
	m.StandinCPUPer1k = med(func(s sample) float64 { return s.StandinCPUPer1k })
	m.WrkCPUPer1k = med(func(s sample) float64 { return s.WrkCPUPer1k })
	m.IdleRSSMiB = med(func(s sample) float64 { return s.IdleRSSMiB })
	m.AnonRSSMiB = med(func(s sample) float64 { return s.AnonRSSMiB })
	m.FileRSSMiB = med(func(s sample) float64 { return s.FileRSSMiB })
	m.ProxyCPUPct = med(func(s sample) float64 { return s.ProxyCPUPct })
	m.PeakRSSMiB = med(func(s sample) float64 { return s.PeakRSSMiB })
	m.LoadCorePct = med(func(s sample) float64 { return s.LoadCorePct })
	m.ProxyCorePct = med(func(s sample) float64 { return s.ProxyCorePct })
	m.MaxOverMean = med(func(s sample) float64 { return s.MaxOverMean })
	m.Non2xx, m.SocketErrors, m.Requests, m.TakenOut, m.OutFailures = 0, 0, 0, nil, nil
	m.mirrorResults, m.MirrorReceived = mirrorResults{}, 0
	m.MirrorInFlightStart = int64(med(func(s sample) float64 { return float64(s.MirrorInFlightStart) }))
	m.MirrorInFlightEnd = int64(med(func(s sample) float64 { return float64(s.MirrorInFlightEnd) }))
	m.MirrorBufferedEnd = 0 // the most of any run: it is checked against a bound
	for _, s := range ss {
		m.MirrorBufferedEnd = max(m.MirrorBufferedEnd, s.MirrorBufferedEnd)
		m.mirrorResults.add(s.mirrorResults)
		m.MirrorReceived += s.MirrorReceived
		m.Non2xx += s.Non2xx
		m.SocketErrors += s.SocketErrors
		m.Requests += s.Requests
		for i, n := range s.TakenOut {
			for len(m.TakenOut) <= i {
				m.TakenOut = append(m.TakenOut, 0)
			}
			m.TakenOut[i] += n
		}
	}
	m.PerStandin = make([]int64, len(ss[0].PerStandin))
	for i := range m.PerStandin {
		m.PerStandin[i] = int64(med(func(s sample) float64 {
			if i < len(s.PerStandin) {
				return float64(s.PerStandin[i])
			}
			return 0
		}))
	}
	return &m
}

func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (r *report) failures(phase, system string, body int) int {
	n := 0
	for _, s := range r.Samples {
		if s.Phase == phase && s.System == system && s.Body == body && s.Err != "" {
			n++
		}
	}
	return n
}

// write saves results.json and results.md and prints the markdown.
func (r *report) write() error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(r.cfg.out, "results.json"), b, 0o644); err != nil {
		return err
	}
	md := r.markdown()
	if err := os.WriteFile(filepath.Join(r.cfg.out, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	return nil
}

func dash(ok bool, format string, v ...any) string {
	if !ok {
		return "—"
	}
	return fmt.Sprintf(format, v...)
}

func perStandin(s *sample) string { return slashed(s.PerStandin) }

// slashed is "a / b / c".
func slashed[T int | int64](v []T) string {
	parts := make([]string, len(v))
	for i, n := range v {
		parts[i] = fmt.Sprint(n)
	}
	return strings.Join(parts, " / ")
}

func (r *report) markdown() string {
	var b strings.Builder
	c := r.cfg
	m := r.Machine
	fmt.Fprintf(&b, "# Benchmark run %s\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- machine: %d CPUs, %s, Linux %s; %s; %s; wrk %s; %s\n", m.CPUs, m.CPU, m.Kernel, m.Go, m.Nginx, m.Wrk, m.Caddy)
	if m.Commit != "" {
		fmt.Fprintf(&b, "- source: commit %s (bench/ as in this tree)\n", m.Commit)
	}
	fmt.Fprintf(&b, "- load average (1/5/15 min) before: %s, after: %s; run took %s\n", r.LoadBefore, r.LoadAfter, r.Finished.Sub(r.Started).Round(time.Second))
	systems, duration := c.systems, c.duration
	switch { // the phases with systems of their own
	case len(c.phases) == 1 && c.phases["sick"]:
		systems, duration = sickSystems, c.sickDuration
	case len(c.phases) == 1 && c.phases["mirror"]:
		systems, duration = mirrorSystems, c.mirrorDuration
	case len(c.phases) == 1 && c.phases["policies"]:
		systems = policiesSystems
	}
	fmt.Fprintf(&b, "- systems under test pinned to CPU %d; wrk and the %d stand-ins to CPU %d; each measurement starts the system afresh, warms up %s, measures %s; %d rounds alternating %s; medians\n",
		c.proxyCPU, c.standins, c.loadCPU, c.warmup, duration, c.repeats, strings.Join(systems, " → "))
	inv := m.Invocation
	if inv == "" {
		inv = os.Getenv("BENCH_INVOCATION")
	}
	if inv != "" {
		fmt.Fprintf(&b, "- command: `%s`, which ran `%s`\n\n", inv, m.Command)
	} else {
		fmt.Fprintf(&b, "- command: `%s`\n\n", m.Command)
	}

	cols := "| system | body | req/s | samples/s | p50 ms | p99 ms | proxy CPU-s / 1k req | req/s per proxy core | proxy CPU % | peak RSS MiB | load side CPU-s / 1k req: stand-ins + wrk | per-stand-in requests | max/mean | non-2xx | load core busy % |\n" +
		"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n"
	row := func(phase, sys string, body int) {
		s := r.median(phase, sys, body)
		if s == nil {
			fmt.Fprintf(&b, "| %s | %d | failed (%d runs) |||||||||||||\n", sys, body, r.failures(phase, sys, body))
			return
		}
		proxy := sys != sysDirect && sys != sysPinned
		bal := dash(sys != sysDirect, "%.3f", s.MaxOverMean)
		fmt.Fprintf(&b, "| %s | %d | %.0f | %.0f | %.2f | %.2f | %s | %s | %s | %s | %.3f + %.3f | %s | %s | %d | %.0f |\n",
			sys, body, s.RPS, s.SamplesPerSec, s.P50US/1000, s.P99US/1000,
			dash(proxy, "%.3f", s.CPUPer1k), dash(proxy && s.CPUPer1k > 0, "%.0f", 1000/s.CPUPer1k),
			dash(proxy, "%.0f", s.ProxyCPUPct), dash(proxy, "%.1f", s.PeakRSSMiB), s.StandinCPUPer1k, s.WrkCPUPer1k,
			perStandin(s), bal, s.Non2xx+s.SocketErrors, s.LoadCorePct)
	}

	// section writes one phase's table: every system for every body.
	section := func(phase, title string, bodies []int) {
		if !c.phases[phase] {
			return
		}
		fmt.Fprintf(&b, "## %s\n\n", title)
		b.WriteString(cols)
		for _, body := range bodies {
			for _, sys := range c.systems {
				row(phase, sys, body)
			}
		}
		b.WriteString("\n")
	}
	section("main", fmt.Sprintf("Push path, stand-ins decode every body (identical work behind every system), %d keep-alive connections", c.connections), c.bodies)
	section("capacity", fmt.Sprintf("Lighter load side: stand-ins only read the body and answer 200, %d keep-alive connections (req/s is the proxy's capacity only where its CPU %% nears 100; otherwise compare req/s per proxy core)", c.connections), c.capacityBodies)
	body := c.bodies[0]
	if c.phases["balance"] {
		fmt.Fprintf(&b, "## Balance: %d clients → %d stand-ins (body %d, decode)\n\n", c.balanceConns, c.standins, body)
		b.WriteString("| system | req/s | per-stand-in requests | max/mean | proxy CPU-s / 1k req | non-2xx |\n|---|---:|---|---:|---:|---:|\n")
		for _, sys := range balanceSystems(c.systems) {
			s := r.median("balance", sys, body)
			if s == nil {
				fmt.Fprintf(&b, "| %s | failed |||||\n", sys)
				continue
			}
			fmt.Fprintf(&b, "| %s | %.0f | %s | %.3f | %s | %d |\n", sys, s.RPS, perStandin(s), s.MaxOverMean,
				dash(sys != sysPinned, "%.3f", s.CPUPer1k), s.Non2xx+s.SocketErrors)
		}
		b.WriteString("\n")
	}
	if c.phases["latency"] && r.LatencyRate > 0 {
		fmt.Fprintf(&b, "## Latency at half load: ~%.0f req/s offered (%d connections, %d ms pause after each answer), body %d, stand-ins %s\n\n",
			r.LatencyRate, c.latencyConns, r.LatencyDelayMS, body, c.latencyWork)
		b.WriteString("| system | req/s | p50 ms | p90 ms | p99 ms | added p50 vs direct µs | proxy CPU-s / 1k req | non-2xx |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
		d := r.median("latency", sysDirect, body)
		for _, sys := range c.systems {
			s := r.median("latency", sys, body)
			if s == nil {
				fmt.Fprintf(&b, "| %s | failed |||||||\n", sys)
				continue
			}
			added := "—"
			if d != nil && sys != sysDirect {
				added = fmt.Sprintf("%+.0f", s.P50US-d.P50US)
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.2f | %.2f | %.2f | %s | %s | %d |\n", sys, s.RPS, s.P50US/1000, s.P90US/1000, s.P99US/1000,
				added, dash(sys != sysDirect, "%.3f", s.CPUPer1k), s.Non2xx+s.SocketErrors)
		}
		b.WriteString("\n")
	}
	if c.phases["rss"] {
		fmt.Fprintf(&b, "## Memory: %d keep-alive connections (body %d, decode, one run each)\n\n", c.rssConns, body)
		b.WriteString("| system | req/s | p50 ms | p99 ms | RSS before load MiB | peak RSS MiB | at the end: anon + file MiB | proxy CPU-s / 1k req | max/mean | non-2xx + socket errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, sys := range c.systems {
			if sys == sysDirect {
				continue
			}
			s := r.median("rss", sys, body)
			if s == nil {
				fmt.Fprintf(&b, "| %s | failed |||||||||\n", sys)
				continue
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.2f | %.2f | %.1f | %.1f | %.1f + %.1f | %.3f | %.3f | %d |\n", sys, s.RPS, s.P50US/1000, s.P99US/1000,
				s.IdleRSSMiB, s.PeakRSSMiB, s.AnonRSSMiB, s.FileRSSMiB, s.CPUPer1k, s.MaxOverMean, s.Non2xx+s.SocketErrors)
		}
		b.WriteString("\n")
	}
	b.WriteString(r.sickMarkdown(body))
	b.WriteString(r.mirrorMarkdown(body))
	b.WriteString(r.policiesMarkdown(body))
	b.WriteString(r.targets())
	if r.PprofCPU != "" {
		fmt.Fprintf(&b, "## Gateway CPU profile under load (%.0f req/s, count-only stand-ins, %d s)\n\n```\n%s```\n\n", r.ProfileRPS, c.profileSeconds, headLines(r.PprofCPU, 40))
		fmt.Fprintf(&b, "## Gateway allocations under load (alloc_space)\n\n```\n%s```\n\n", headLines(r.PprofAlloc, 30))
	}
	if r.GoBench != "" {
		fmt.Fprintf(&b, "## Go benchmarks (benchstat)\n\n```\n%s```\n\n", r.GoBench)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "- note: %s\n", n)
	}
	return b.String()
}

func headLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "")
}

// targets checks the performance targets against this run: those of the
// phases that ran, or nothing.
func (r *report) targets() string {
	body := r.cfg.bodies[0]
	capBody := body
	if len(r.cfg.capacityBodies) > 0 {
		capBody = r.cfg.capacityBodies[0]
	}
	var b strings.Builder
	g := func(phase string, bd int) *sample { return r.median(phase, sysGateway, bd) }
	if s, p := r.median("balance", sysGateway, body), r.median("balance", sysPinned, body); s != nil {
		base := ""
		if p != nil {
			base = fmt.Sprintf(" (connection-pinned baseline %.3f)", p.MaxOverMean)
		}
		fmt.Fprintf(&b, "| balance max/mean ≤ 1.02, %d clients → %d stand-ins | %.3f%s | %s |\n", r.cfg.balanceConns, r.cfg.standins, s.MaxOverMean, base, verdict(s.MaxOverMean <= 1.02))
	}
	for _, phase := range []string{"capacity", "main"} {
		bd := body
		if phase == "capacity" {
			bd = capBody
		}
		s := g(phase, bd)
		if s == nil {
			continue
		}
		if n := r.median(phase, sysNginx, bd); n != nil && n.RPS > 0 {
			ratio := s.RPS / n.RPS
			fmt.Fprintf(&b, "| throughput ≥ 1.0× nginx (%s, body %d) | %.0f vs %.0f req/s = %.2f× | %s |\n", phase, bd, s.RPS, n.RPS, ratio, verdict(ratio >= 1.0))
		}
		if cr := r.median(phase, sysCaddy, bd); cr != nil && cr.RPS > 0 {
			ratio := s.RPS / cr.RPS
			fmt.Fprintf(&b, "| throughput ≥ 1.2× Caddy reverse_proxy (%s, body %d) | %.0f vs %.0f req/s = %.2f× | %s |\n", phase, bd, s.RPS, cr.RPS, ratio, verdict(ratio >= 1.2))
		}
		for _, o := range []struct {
			sys  string
			want float64
		}{{sysNginx, 1.0}, {sysCaddy, 1.2}} {
			if n := r.median(phase, o.sys, bd); n != nil && n.CPUPer1k > 0 && s.CPUPer1k > 0 {
				ratio := n.CPUPer1k / s.CPUPer1k
				fmt.Fprintf(&b, "| throughput per proxy core ≥ %.1f× %s (%s, body %d; 1 / CPU per request) | %.0f vs %.0f req/s per core = %.2f× | %s |\n",
					o.want, o.sys, phase, bd, 1000/s.CPUPer1k, 1000/n.CPUPer1k, ratio, verdict(ratio >= o.want))
			}
		}
		if n := r.median(phase, sysNginx, bd); n != nil && n.CPUPer1k > 0 {
			ratio := s.CPUPer1k / n.CPUPer1k
			fmt.Fprintf(&b, "| CPU per request ≤ nginx's (%s, body %d) | %.3f vs %.3f CPU-s / 1k req = %.2f× | %s |\n", phase, bd, s.CPUPer1k, n.CPUPer1k, ratio, verdict(ratio <= 1.0))
		}
	}
	if s, d := r.median("latency", sysGateway, body), r.median("latency", sysDirect, body); s != nil && d != nil {
		added := s.P50US - d.P50US
		fmt.Fprintf(&b, "| added p50 vs direct ≤ 150 µs at half load | %+.0f µs (%.2f vs %.2f ms) | %s |\n", added, s.P50US/1000, d.P50US/1000, verdict(added <= 150))
	}
	if s := r.median("rss", sysGateway, body); s != nil {
		fmt.Fprintf(&b, "| RSS ≤ 100 MiB with %d keep-alive clients | %.1f MiB | %s |\n", r.cfg.rssConns, s.PeakRSSMiB, verdict(s.PeakRSSMiB <= 100))
	}
	b.WriteString(r.sickTargets(body))
	b.WriteString(r.mirrorTargets(body))
	b.WriteString(r.policiesTargets(body))
	if b.Len() == 0 {
		return ""
	}
	return "## Targets\n\n| target | measured | met |\n|---|---|---|\n" + b.String() + "\n"
}

// verdict is a target's "met" column.
func verdict(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}
