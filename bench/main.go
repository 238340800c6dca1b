// Command bench measures metrics_gateway against nginx (as the
// mimir-distributed helm chart configures it, and with upstream keepalive)
// and Caddy's reverse_proxy on loopback, with the same distributor stand-ins
// behind every system. See BENCHMARKS.md; `bash bench/run.sh` runs it all.
//
//	go run ./bench -caddy /path/to/caddy [flags]   # the benchmark
//	go run ./bench standins [-n 3]                 # the stand-ins alone (used by the benchmark)
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

type config struct {
	duration, warmup    time.Duration
	connections         int
	bodies              []int
	capacityBodies      []int
	systems             []string
	repeats             int
	out                 string
	caddy, nginx, wrk   string
	caddyBase           string
	proxyCPU, loadCPU   int
	phases              map[string]bool
	balanceConns        int
	rssConns            int
	latencyConns        int
	latencyRate         float64
	profileSeconds      int
	standins            int
	maxTotal            time.Duration
	commandLine         string
	goBenchFile         string
	latencyLoadFraction float64
	latencyWork         string
	renderOnly          bool
	sickDuration        time.Duration
	sickDelayMS         int
	sickLatency         time.Duration
	standinsWorkers     int
	sickWork            string
	sickScenarios       map[string]bool
	standinsProfile     bool
	standinsCodec       string
	mirrorDuration      time.Duration
	mirrorDelayMS       int
	mirrorMaxInFlight   int
	mirrorTimeout       time.Duration
	mirrorCPU           int
}

var phaseNames = []string{"main", "capacity", "balance", "latency", "rss", "profile", "sick", "mirror", "policies"}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "standins" {
		os.Exit(runStandins(os.Args[2:]))
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.maxTotal)
	defer cancel()
	run := run
	if cfg.renderOnly {
		run = render
	}
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	c := &config{}
	var bodies, capBodies, systems, phases string
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "measured duration of each load run")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured load before each run")
	fs.IntVar(&c.connections, "connections", 16, "keep-alive connections (K) of the main and capacity runs")
	fs.StringVar(&bodies, "bodies", "2000,500", "samples per Remote-Write body (one series per sample), main run")
	fs.StringVar(&capBodies, "capacity-bodies", "2000", "bodies of the capacity run")
	fs.StringVar(&systems, "systems", strings.Join(allSystems, ","), "systems under test, in the order they alternate (besides these: gateway-base, with -caddy-base)")
	fs.IntVar(&c.repeats, "repeats", 3, "rounds of A B C D alternation; medians are reported")
	fs.StringVar(&c.out, "out", "bench/out", "output directory (bench/results/<scenario>/ holds the committed results)")
	fs.StringVar(&c.caddy, "caddy", "", "caddy binary built from ./cmd/caddy (required for caddy-rp and gateway)")
	fs.StringVar(&c.caddyBase, "caddy-base", "", "another build of ./cmd/caddy (e.g. an older commit) for the system gateway-base: the gateway's configuration, to compare two builds in one run")
	fs.StringVar(&c.nginx, "nginx", "nginx", "nginx binary")
	fs.StringVar(&c.wrk, "wrk", "wrk", "wrk binary")
	fs.IntVar(&c.proxyCPU, "proxy-cpu", 1, "CPU the system under test is pinned to")
	fs.IntVar(&c.loadCPU, "load-cpu", 0, "CPU wrk and the stand-ins are pinned to")
	fs.StringVar(&phases, "phases", strings.Join(phaseNames, ","), "phases to run: "+strings.Join(phaseNames, ","))
	fs.DurationVar(&c.sickDuration, "sick-duration", 10*time.Second, "measured duration of each run of the sick phase (longer than the passive health checks' 5s fail_duration)")
	fs.IntVar(&c.sickDelayMS, "sick-delay", 0, "pause in ms after each answer, per connection, in the sick phase (0: closed loop at full speed, which saturates the load CPU)")
	fs.DurationVar(&c.sickLatency, "sick-latency", 15*time.Millisecond, "unhealthy_latency of gateway-health and caddy-lc-health in the slow scenario (the stand-in is 20 ms late; set it above the healthy stand-ins' tail latency on the machine)")
	fs.StringVar(&c.sickWork, "sick-work", workCount, "stand-in work in the sick phase: count (the proxies' own cost shows most) or decode (each push decoded, nearer a distributor's work)")
	fs.DurationVar(&c.mirrorDuration, "mirror-duration", 10*time.Second, "measured duration of each run of the mirror phase")
	fs.IntVar(&c.mirrorDelayMS, "mirror-delay", 6, "pause in ms after each answer, per connection, in the mirror phase, so that the load CPU, which serves the mirror stand-ins too, is not saturated (0: closed loop at full speed)")
	fs.IntVar(&c.mirrorMaxInFlight, "mirror-max-in-flight", 256, "max_in_flight of the mirror")
	fs.DurationVar(&c.mirrorTimeout, "mirror-timeout", 10*time.Second, "timeout of the mirror")
	fs.IntVar(&c.mirrorCPU, "mirror-cpu", -1, "CPU the mirror stand-ins are pinned to (-1: the load CPU, with the other stand-ins; the proxy's CPU takes their work off the load CPU, where it lands right before each push's own call)")
	var sick string
	fs.StringVar(&sick, "sick-scenarios", "healthy,slow,503", "scenarios of the sick phase")
	fs.IntVar(&c.balanceConns, "balance-connections", 4, "clients of the balance run")
	fs.IntVar(&c.rssConns, "rss-connections", 256, "keep-alive connections of the memory run")
	fs.IntVar(&c.latencyConns, "latency-connections", 8, "connections of the fixed-rate latency run")
	fs.Float64Var(&c.latencyRate, "latency-rate", 0, "requests/s of the latency run (0: -latency-load × direct's median from the main run, the most the box pushes through decoding stand-ins)")
	fs.Float64Var(&c.latencyLoadFraction, "latency-load", 0.5, "fraction of direct's throughput offered in the latency run")
	fs.StringVar(&c.latencyWork, "latency-work", workCount, "stand-in work in the latency run: count (the proxy's own latency) or decode (adds queueing behind decodes on the load core)")
	fs.IntVar(&c.profileSeconds, "profile-seconds", 8, "CPU profile length of the gateway under load")
	fs.BoolVar(&c.standinsProfile, "standins-profile", false, "take a CPU profile of the stand-ins during each system's first run of every phase (standins-<phase>-<system>-<body>.pprof in the output directory)")
	fs.IntVar(&c.standins, "standins", 3, "number of distributor stand-ins")
	fs.StringVar(&c.standinsCodec, "standins-codec", codecMimir, "how the gRPC stand-ins decode requests: mimir (as a Mimir process does: power-of-two pooled buffers) or grpc (grpc-go's default codec, which gathers every push of 32 KiB to 1 MiB into a cleared 1 MiB buffer)")
	fs.IntVar(&c.standinsWorkers, "standins-grpc-workers", mimirGRPCWorkers, "gRPC stream workers of each stand-in, as Mimir's -server.grpc.num-workers (Mimir's default 100; 0: a goroutine per call, dskit's default)")
	fs.DurationVar(&c.maxTotal, "max-total", 30*time.Minute, "abort the whole benchmark after this long")
	fs.StringVar(&c.goBenchFile, "gobench", "", "benchstat output of the Go benchmarks to include in the report")
	fs.BoolVar(&c.renderOnly, "render-only", false, "measure nothing: rebuild results.md from <out>/results.json (give the run's other flags too)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var err error
	if c.bodies, err = parseInts(bodies); err != nil {
		return nil, fmt.Errorf("-bodies: %w", err)
	}
	if c.capacityBodies, err = parseInts(capBodies); err != nil {
		return nil, fmt.Errorf("-capacity-bodies: %w", err)
	}
	for _, s := range strings.Split(systems, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		known := s == sysGatewayBase
		for _, k := range allSystems {
			known = known || s == k
		}
		if !known {
			return nil, fmt.Errorf("-systems: unknown %q (known: %s)", s, strings.Join(allSystems, ","))
		}
		c.systems = append(c.systems, s)
	}
	c.sickScenarios = map[string]bool{}
	for _, sc := range strings.Split(sick, ",") {
		c.sickScenarios["sick-"+strings.TrimSpace(sc)] = true
	}
	c.phases = map[string]bool{}
	for _, p := range strings.Split(phases, ",") {
		if p = strings.TrimSpace(p); p != "" {
			c.phases[p] = true
		}
	}
	if c.latencyWork != workDecode && c.latencyWork != workCount {
		return nil, fmt.Errorf("-latency-work: %q is neither decode nor count", c.latencyWork)
	}
	if _, err := standinGRPCOptions(c.standinsCodec); err != nil {
		return nil, fmt.Errorf("-standins-codec: %w", err)
	}
	if c.standinsWorkers < 0 {
		return nil, fmt.Errorf("-standins-grpc-workers: %d is negative", c.standinsWorkers)
	}
	if c.sickLatency <= 0 {
		return nil, fmt.Errorf("-sick-latency: %s is not a positive duration", c.sickLatency)
	}
	if c.sickWork != workDecode && c.sickWork != workCount {
		return nil, fmt.Errorf("-sick-work: %q is neither decode nor count", c.sickWork)
	}
	if c.repeats < 1 || c.connections < 1 || c.duration < time.Second {
		return nil, errors.New("need -repeats >= 1, -connections >= 1, -duration >= 1s")
	}
	if c.mirrorMaxInFlight < 1 || c.mirrorTimeout <= 0 || c.mirrorDuration < time.Second || c.mirrorDelayMS < 0 {
		return nil, errors.New("need -mirror-max-in-flight >= 1, -mirror-timeout > 0, -mirror-duration >= 1s, -mirror-delay >= 0")
	}
	if c.caddy == "" && !c.renderOnly && (contains(c.systems, sysCaddy) || contains(c.systems, sysGateway) || c.phases["mirror"] || c.phases["policies"]) {
		return nil, errors.New("-caddy is required for caddy-rp and gateway, and the mirror and policies phases (go build -o /tmp/caddy ./cmd/caddy)")
	}
	if c.caddyBase == "" && !c.renderOnly && contains(c.systems, sysGatewayBase) {
		return nil, errors.New("-caddy-base is required for gateway-base (the other build of ./cmd/caddy)")
	}
	c.commandLine = "bench " + strings.Join(args, " ")
	return c, nil
}

// mirrorStandinsCPU is the CPU the mirror stand-ins are pinned to:
// -mirror-cpu, or the load CPU.
func (c *config) mirrorStandinsCPU() int {
	if c.mirrorCPU >= 0 {
		return c.mirrorCPU
	}
	return c.loadCPU
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// run starts the stand-ins and runs every phase.
func run(ctx context.Context, cfg *config) error {
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	scratch, err := os.MkdirTemp("", "metrics-gateway-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)

	e := &env{cfg: cfg, dir: scratch}
	e.luaPath = filepath.Join(scratch, "push.lua")
	if err := os.WriteFile(e.luaPath, pushLua, 0o644); err != nil {
		return err
	}
	e.bodyPaths = map[int]string{}
	e.bodyBytes = map[int][]byte{}
	for _, n := range unionInts(cfg.bodies, cfg.capacityBodies) {
		b := standin.RemoteWriteBody(n, 1)
		p := filepath.Join(scratch, fmt.Sprintf("rw1-%d.bin", n))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
		e.bodyPaths[n], e.bodyBytes[n] = p, b
	}

	if cfg.phases["policies"] {
		if e.policies, e.auth, err = policyLines(otherPolicies); err != nil {
			return err
		}
	}
	stopStandins, err := e.startStandins(ctx)
	if err != nil {
		return err
	}
	defer stopStandins()

	rep := &report{cfg: cfg, Started: time.Now(), LoadBefore: loadAvg(), Machine: machineInfo(cfg)}
	logf("stand-ins: %v http :%d grpc :%d dns %s; load average %s", e.info.IPs, e.info.HTTPPort, e.info.GRPCPort, e.info.DNS, rep.LoadBefore)
	if e.mirror.Control != "" {
		logf("mirror stand-ins: %v grpc :%d, hung :%d, dns %s", e.mirror.MirrorIPs, e.mirror.MirrorGRPCPort, e.mirror.HungGRPCPort, e.mirror.DNS)
	}

	if cfg.phases["main"] {
		for r := 1; r <= cfg.repeats; r++ {
			for _, body := range cfg.bodies {
				for _, sys := range cfg.systems {
					rep.add(e.measure(ctx, runSpec{phase: "main", system: sys, body: body, rep: r, work: workDecode, conns: cfg.connections}))
				}
			}
		}
	}
	if cfg.phases["capacity"] {
		for r := 1; r <= cfg.repeats; r++ {
			for _, body := range cfg.capacityBodies {
				for _, sys := range cfg.systems {
					rep.add(e.measure(ctx, runSpec{phase: "capacity", system: sys, body: body, rep: r, work: workCount, conns: cfg.connections}))
				}
			}
		}
	}
	body := cfg.bodies[0]
	if cfg.phases["balance"] {
		for r := 1; r <= cfg.repeats; r++ {
			for _, sys := range balanceSystems(cfg.systems) {
				rep.add(e.measure(ctx, runSpec{phase: "balance", system: sys, body: body, rep: r, work: workDecode, conns: cfg.balanceConns}))
			}
		}
	}
	if cfg.phases["latency"] {
		rate := cfg.latencyRate
		var directP50 float64
		if m := rep.median("main", sysDirect, body); m != nil {
			directP50 = m.P50US
			if rate == 0 {
				rate = cfg.latencyLoadFraction * m.RPS
			}
		}
		if rate <= 0 {
			logf("latency: no rate (run the main phase with direct, or set -latency-rate); skipped")
		} else {
			// Each connection sends, waits for the answer, then pauses:
			// rate ~= conns / (latency + pause).
			delay := int(float64(cfg.latencyConns)*1000/rate - directP50/1000 + 0.5)
			if delay < 1 {
				delay = 1
			}
			rep.LatencyRate, rep.LatencyDelayMS = rate, delay
			for r := 1; r <= cfg.repeats; r++ {
				for _, sys := range cfg.systems {
					rep.add(e.measure(ctx, runSpec{phase: "latency", system: sys, body: body, rep: r, work: cfg.latencyWork, conns: cfg.latencyConns, delayMS: delay}))
				}
			}
		}
	}
	if cfg.phases["rss"] {
		for _, sys := range cfg.systems {
			if sys == sysDirect {
				continue
			}
			rep.add(e.measure(ctx, runSpec{phase: "rss", system: sys, body: body, rep: 1, work: workDecode, conns: cfg.rssConns, threads: 1}))
		}
	}
	if cfg.phases["sick"] {
		if err := e.runSick(ctx, rep, body); err != nil {
			return err
		}
	}
	if cfg.phases["mirror"] {
		e.runMirror(ctx, rep, body)
	}
	if cfg.phases["policies"] {
		e.runPolicies(ctx, rep, body)
	}
	if cfg.phases["profile"] && contains(cfg.systems, sysGateway) {
		if err := e.profile(ctx, rep, body); err != nil {
			logf("profile: %v", err)
			rep.Notes = append(rep.Notes, "profile failed: "+err.Error())
		}
	}
	rep.LoadAfter = loadAvg()
	rep.Finished = time.Now()
	if cfg.goBenchFile != "" {
		if b, err := os.ReadFile(cfg.goBenchFile); err == nil {
			rep.GoBench = string(b)
		}
	}
	return rep.write()
}

func unionInts(a, b []int) []int {
	seen := map[int]bool{}
	var out []int
	for _, v := range append(append([]int{}, a...), b...) {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// balanceSystems replaces direct (one stand-in) with direct-pinned.
func balanceSystems(systems []string) []string {
	var out []string
	for _, s := range systems {
		if s == sysDirect {
			s = sysPinned
		}
		out = append(out, s)
	}
	return out
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

// startStandins runs `bench standins` pinned to the load CPU and reads its
// addresses, and for the mirror phase a second one with the mirror
// clusters only (so that what the mirror stand-ins hold and allocate does
// not change the garbage collection of the primary ones). The returned func
// stops them.
func (e *env) startStandins(ctx context.Context) (func(), error) {
	common := []string{"-codec", e.cfg.standinsCodec, "-grpc-workers", strconv.Itoa(e.cfg.standinsWorkers),
		"-max-lifetime", (e.cfg.maxTotal + time.Minute).String()}
	var err error
	var stop func()
	e.info, e.standinsPID, stop, err = e.startStandinsProc(ctx, e.cfg.loadCPU, append([]string{"-n", strconv.Itoa(e.cfg.standins)}, common...))
	if err != nil || !e.cfg.phases["mirror"] {
		return stop, err
	}
	var stopMirror func()
	e.mirror, e.mirrorPID, stopMirror, err = e.startStandinsProc(ctx, e.cfg.mirrorStandinsCPU(), append([]string{"-n", "0", "-mirror", strconv.Itoa(mirrorStandins)}, common...))
	if err != nil {
		stop()
		return nil, fmt.Errorf("mirror stand-ins: %w", err)
	}
	return func() { stopMirror(); stop() }, nil
}

// startStandinsProc starts one `bench standins` process and reads the line
// it prints once it listens.
func (e *env) startStandinsProc(ctx context.Context, cpu int, args []string) (standinsInfo, int, func(), error) {
	var info standinsInfo
	self, err := os.Executable()
	if err != nil {
		return info, 0, nil, err
	}
	cmd := exec.Command("taskset", append([]string{"-c", strconv.Itoa(cpu), self, "standins"}, args...)...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return info, 0, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return info, 0, nil, err
	}
	if err := cmd.Start(); err != nil {
		return info, 0, nil, err
	}
	stop := func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line, ok := <-lines:
		if !ok {
			stop()
			return info, 0, nil, errors.New("standins exited before listening")
		}
		if err := json.Unmarshal([]byte(line), &info); err != nil {
			stop()
			return info, 0, nil, fmt.Errorf("standins said %q: %w", line, err)
		}
	case <-time.After(30 * time.Second):
		stop()
		return info, 0, nil, errors.New("standins did not start within 30s")
	case <-ctx.Done():
		stop()
		return info, 0, nil, ctx.Err()
	}
	return info, cmd.Process.Pid, stop, nil // taskset execs the program: same pid
}

// standinsCPUSeconds is the CPU time of the stand-ins processes.
func (e *env) standinsCPUSeconds() float64 {
	t := treeCPUSeconds(e.standinsPID)
	if e.mirrorPID > 0 {
		t += treeCPUSeconds(e.mirrorPID)
	}
	return t
}

// stats reads the stand-ins' counters, the mirror stand-ins' in Mirror.
func (e *env) stats(ctx context.Context) (statsReply, error) {
	get := func(control string) (statsReply, error) {
		var rep statsReply
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+control+"/stats", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return rep, err
		}
		defer resp.Body.Close()
		return rep, json.NewDecoder(resp.Body).Decode(&rep)
	}
	rep, err := get(e.info.Control)
	if err != nil || e.mirror.Control == "" {
		return rep, err
	}
	m, err := get(e.mirror.Control)
	rep.Mirror = m.Mirror
	return rep, err
}

// setWork switches the stand-ins between decode and count.
func (e *env) setWork(ctx context.Context, mode string) error {
	if e.work == mode {
		return nil
	}
	for _, control := range []string{e.info.Control, e.mirror.Control} {
		if control == "" {
			continue
		}
		if err := postControl(ctx, control, "/work?mode="+mode); err != nil {
			return err
		}
	}
	e.work = mode
	return nil
}

// setSick makes the second stand-in slow, failing or healthy again.
func (e *env) setSick(ctx context.Context, mode string) error {
	return postControl(ctx, e.info.Control, "/sick?mode="+mode)
}

// postControl sends a command to a stand-ins process's control address.
func postControl(ctx context.Context, control, pathAndQuery string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+control+pathAndQuery, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("POST %s: status %d", pathAndQuery, resp.StatusCode)
	}
	return nil
}
