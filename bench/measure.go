package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// runSpec is one measurement.
type runSpec struct {
	phase, system, work string
	body, rep, conns    int
	threads, delayMS    int
	duration            time.Duration // measured; 0: -duration
}

// sample is the result of one measurement (one process start, one wrk run).
type sample struct {
	Phase       string `json:"phase"`
	System      string `json:"system"`
	Body        int    `json:"body_samples"`
	Rep         int    `json:"rep"`
	Work        string `json:"standin_work"`
	Connections int    `json:"connections"`
	DelayMS     int    `json:"delay_ms,omitempty"`

	Requests      int64   `json:"requests"`
	Seconds       float64 `json:"seconds"`
	RPS           float64 `json:"rps"`
	SamplesPerSec float64 `json:"samples_per_sec"`
	P50US         float64 `json:"p50_us"`
	P90US         float64 `json:"p90_us"`
	P99US         float64 `json:"p99_us"`
	MaxUS         float64 `json:"max_us"`
	Non2xx        int64   `json:"non_2xx"`
	SocketErrors  int64   `json:"socket_errors"`

	StandinCPUPer1k float64 `json:"standins_cpu_s_per_1k"`
	WrkCPUPer1k     float64 `json:"wrk_cpu_s_per_1k"`
	IdleRSSMiB      float64 `json:"idle_rss_mib"`
	AnonRSSMiB      float64 `json:"rss_anon_mib_at_end"` // heap, stacks: RssAnon when the load ends
	FileRSSMiB      float64 `json:"rss_file_mib_at_end"` // mapped binary and files: RssFile when the load ends
	ProxyCPUSeconds float64 `json:"proxy_cpu_seconds"`
	CPUPer1k        float64 `json:"proxy_cpu_s_per_1k"`
	ProxyCPUPct     float64 `json:"proxy_cpu_pct"`
	PeakRSSMiB      float64 `json:"peak_rss_mib"`
	LoadCorePct     float64 `json:"load_core_busy_pct"`
	ProxyCorePct    float64 `json:"proxy_core_busy_pct"`

	PerStandin []int64 `json:"per_standin_requests"`
	// TakenOut counts, per stand-in, how often the gateway's passive health
	// check took it out (its "endpoint out" log lines, warm-up included).
	TakenOut    []int    `json:"per_standin_taken_out,omitempty"`
	OutFailures []string `json:"out_failures,omitempty"` // the first failures that took one out
	MaxOverMean float64  `json:"max_over_mean"`
	// BodyBytes is the size of the pushed body.
	BodyBytes int `json:"body_bytes,omitempty"`
	// The mirror phase: the gateway's copies by result over the measured
	// run (metrics_gateway_mirror_requests_total), its copies in flight
	// when it started and ended (metrics_gateway_mirror_in_flight), and the
	// copies the mirror stand-ins received.
	mirrorResults
	MirrorInFlightStart int64  `json:"mirror_in_flight_start,omitempty"`
	MirrorInFlightEnd   int64  `json:"mirror_in_flight_end,omitempty"`
	MirrorBufferedEnd   int64  `json:"mirror_buffered_end,omitempty"` // body bytes held at the end
	MirrorReceived      int64  `json:"mirror_received,omitempty"`
	LoadAvg             string `json:"loadavg"`
	Err                 string `json:"error,omitempty"`
}

func (e *env) measure(ctx context.Context, s runSpec) sample {
	res := sample{Phase: s.phase, System: s.system, Body: s.body, Rep: s.rep, Work: s.work,
		Connections: s.conns, DelayMS: s.delayMS, LoadAvg: loadAvg(), BodyBytes: len(e.bodyBytes[s.body])}
	fail := func(err error) sample {
		res.Err = err.Error()
		logf("%-8s %-13s body=%d rep=%d: ERROR %v", s.phase, s.system, s.body, s.rep, err)
		return res
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if err := e.setWork(ctx, s.work); err != nil {
		return fail(err)
	}
	spec := loadSpec{connections: s.conns, threads: s.threads, bodyPath: e.bodyPaths[s.body], delayMS: s.delayMS}

	var r *running
	if s.system != sysPinned {
		var err error
		if r, err = e.startSystem(ctx, s.system, e.bodyBytes[s.body]); err != nil {
			return fail(err)
		}
		defer r.stop()
		spec.url, spec.auth = r.url, r.auth
		if r.pid > 0 {
			res.IdleRSSMiB = float64(treeMemKiB(r.pid).rss) / 1024
		}
		if e.cfg.warmup > 0 {
			spec.duration = e.cfg.warmup
			if _, err := e.runWrk(ctx, spec); err != nil {
				return fail(fmt.Errorf("warm-up: %w", err))
			}
		}
	}

	// Requests still queued at the stand-ins from the warm-up must not
	// count in this run.
	before, err := e.settledStats(ctx)
	if err != nil {
		return fail(err)
	}
	var mirror0 mirrorCounts
	if hasMirror(s.system) {
		if mirror0, err = scrapeMirror(ctx, r.adminAddr); err != nil {
			return fail(fmt.Errorf("mirror metrics: %w", err))
		}
	}
	sCPU0 := e.standinsCPUSeconds()
	var cpu0 float64
	if r != nil && r.pid > 0 {
		cpu0 = treeCPUSeconds(r.pid)
	}
	ct0 := cpuTimes()
	spec.duration = cmp.Or(s.duration, e.cfg.duration)
	profiled := make(chan error, 1)
	if e.cfg.standinsProfile && s.rep == 1 {
		name := fmt.Sprintf("standins-%s-%s-%d.pprof", s.phase, s.system, s.body)
		go func() { profiled <- e.profileStandins(ctx, spec.duration, name) }()
	} else {
		profiled <- nil
	}
	var w wrkResult
	if s.system == sysPinned {
		w, err = e.runPinned(ctx, spec)
	} else {
		w, err = e.runWrk(ctx, spec)
	}
	if perr := <-profiled; perr != nil {
		logf("stand-ins profile: %v", perr)
	}
	if err != nil {
		return fail(err)
	}
	ct1 := cpuTimes()
	after, err := e.settledStats(ctx)
	if err != nil {
		return fail(err)
	}
	sCPU1 := e.standinsCPUSeconds()
	if hasMirror(s.system) {
		mirror1, err := scrapeMirror(ctx, r.adminAddr)
		if err != nil {
			return fail(fmt.Errorf("mirror metrics: %w", err))
		}
		res.mirrorResults = mirror1.sub(mirror0).mirrorResults
		res.MirrorInFlightStart, res.MirrorInFlightEnd = mirror0.InFlight, mirror1.InFlight
		res.MirrorBufferedEnd = mirror1.Buffered
		// Only the stand-ins this system mirrors to: a hung stand-in may
		// count a copy of an earlier system's run late.
		prefix := map[string]string{sysGatewayMirror: "mirror-", sysGatewayMirrorHung: "hung-"}[s.system]
		for i := range after.Mirror {
			if i < len(before.Mirror) && prefix != "" && strings.HasPrefix(after.Mirror[i].Name, prefix) {
				res.MirrorReceived += after.Mirror[i].Requests - before.Mirror[i].Requests
			}
		}
	}

	res.Requests = w.Requests
	res.Seconds = float64(w.DurationUS) / 1e6
	if res.Seconds > 0 {
		res.RPS = float64(w.Requests) / res.Seconds
	}
	res.P50US, res.P90US, res.P99US, res.MaxUS = w.P50US, w.P90US, w.P99US, w.MaxUS
	res.Non2xx = w.ErrStatus
	res.SocketErrors = w.ErrConnect + w.ErrRead + w.ErrWrite + w.ErrTimeout
	res.LoadCorePct = busyPct(ct0, ct1, e.cfg.loadCPU)
	res.ProxyCorePct = busyPct(ct0, ct1, e.cfg.proxyCPU)

	var samples int64
	for i := range after.Standins {
		d := after.Standins[i].Requests
		if i < len(before.Standins) {
			d -= before.Standins[i].Requests
			samples += after.Standins[i].Samples - before.Standins[i].Samples
		}
		res.PerStandin = append(res.PerStandin, d)
	}
	res.MaxOverMean = maxOverMean(res.PerStandin)
	if w.Requests > 0 {
		res.StandinCPUPer1k = (sCPU1 - sCPU0) / float64(w.Requests) * 1000
		res.WrkCPUPer1k = w.CPUSeconds / float64(w.Requests) * 1000
	}
	if s.work == workDecode {
		res.SamplesPerSec = float64(samples) / res.Seconds // accepted by the stand-ins
	} else {
		res.SamplesPerSec = float64(w.Requests-w.ErrStatus) * float64(s.body) / res.Seconds
	}
	if r != nil && r.pid > 0 {
		res.ProxyCPUSeconds = treeCPUSeconds(r.pid) - cpu0
		if w.Requests > 0 {
			res.CPUPer1k = res.ProxyCPUSeconds / float64(w.Requests) * 1000
		}
		res.ProxyCPUPct = 100 * res.ProxyCPUSeconds / res.Seconds
		m := treeMemKiB(r.pid)
		res.PeakRSSMiB = float64(m.peak) / 1024
		res.AnonRSSMiB = float64(m.anon) / 1024
		res.FileRSSMiB = float64(m.file) / 1024
	}
	if s.system == sysGatewayHealth {
		res.TakenOut, res.OutFailures = takenOut(r.logPath, e.info.IPs)
	}
	logf("%-8s %-13s body=%d c=%d rep=%d: %7.0f req/s p50 %6.2f ms p99 %7.2f ms cpu %.3f s/1k (%3.0f%%) stand-ins %.3f wrk %.3f rss %5.1f MiB max/mean %.3f %v non2xx %d err %d",
		s.phase, s.system, s.body, s.conns, s.rep, res.RPS, res.P50US/1000, res.P99US/1000, res.CPUPer1k, res.ProxyCPUPct,
		res.StandinCPUPer1k, res.WrkCPUPer1k, res.PeakRSSMiB, res.MaxOverMean, res.PerStandin, res.Non2xx, res.SocketErrors)
	if hasMirror(s.system) {
		c := res.mirrorResults
		logf("%-8s %-13s copies ok %d failed %d timeout %d dropped %d; in flight %d -> %d; the mirror stand-ins got %d",
			s.phase, s.system, c.OK, c.Failed, c.Timeout, c.Dropped, res.MirrorInFlightStart, res.MirrorInFlightEnd, res.MirrorReceived)
	}
	return res
}

// runPinned is the connection-pinned baseline: conns wrk processes of one
// connection each, connection i going straight to stand-in i mod N, as a
// layer-4 Service spreads long-lived connections.
func (e *env) runPinned(ctx context.Context, spec loadSpec) (wrkResult, error) {
	n := spec.connections
	results := make([]wrkResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		s := spec
		s.connections, s.threads = 1, 1
		s.url = fmt.Sprintf("http://%s:%d/api/v1/push", e.info.IPs[i%len(e.info.IPs)], e.info.HTTPPort)
		wg.Go(func() {
			results[i], errs[i] = e.runWrk(ctx, s)
		})
	}
	wg.Wait()
	var sum wrkResult
	for i, r := range results {
		if errs[i] != nil {
			return sum, errs[i]
		}
		sum.Requests += r.Requests
		sum.ErrStatus += r.ErrStatus
		sum.ErrConnect += r.ErrConnect
		sum.ErrRead += r.ErrRead
		sum.ErrWrite += r.ErrWrite
		sum.ErrTimeout += r.ErrTimeout
		sum.DurationUS = max(sum.DurationUS, r.DurationUS)
		sum.CPUSeconds += r.CPUSeconds
		sum.P50US += r.P50US / float64(n)
		sum.P90US = max(sum.P90US, r.P90US)
		sum.P99US = max(sum.P99US, r.P99US)
		sum.MaxUS = max(sum.MaxUS, r.MaxUS)
	}
	return sum, nil
}

// settledStats waits until the stand-ins' request counters stop moving
// (queued requests drained; at most 5 s) and returns them.
func (e *env) settledStats(ctx context.Context) (statsReply, error) {
	total := func(r statsReply) (n int64) {
		for _, s := range r.Standins {
			n += s.Requests
		}
		return n
	}
	prev, err := e.stats(ctx)
	if err != nil {
		return prev, err
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(150 * time.Millisecond)
		cur, err := e.stats(ctx)
		if err != nil {
			return cur, err
		}
		if total(cur) == total(prev) {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

func maxOverMean(v []int64) float64 {
	if len(v) == 0 {
		return 0
	}
	var sum, mx int64
	for _, x := range v {
		sum += x
		mx = max(mx, x)
	}
	if sum == 0 {
		return 0
	}
	return float64(mx) / (float64(sum) / float64(len(v)))
}

// profile loads the gateway to capacity (count-only stand-ins) and takes a
// CPU profile and an allocation profile from Caddy's admin /debug/pprof/.
func (e *env) profile(ctx context.Context, rep *report, body int) error {
	if err := e.setWork(ctx, workCount); err != nil {
		return err
	}
	r, err := e.startSystem(ctx, sysGateway, e.bodyBytes[body])
	if err != nil {
		return err
	}
	defer r.stop()
	secs := e.cfg.profileSeconds
	spec := loadSpec{url: r.url, connections: e.cfg.connections, bodyPath: e.bodyPaths[body],
		duration: time.Duration(secs+3) * time.Second}
	var w wrkResult
	var werr error
	done := make(chan struct{})
	go func() { defer close(done); w, werr = e.runWrk(ctx, spec) }()
	time.Sleep(1500 * time.Millisecond)

	type prof struct{ name, url, file string }
	profs := []prof{
		{"cpu", fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", r.adminAddr, secs), "gateway-cpu.pprof"},
		{"alloc", fmt.Sprintf("http://%s/debug/pprof/allocs?seconds=%d", r.adminAddr, secs), "gateway-allocs.pprof"},
	}
	errs := make([]error, len(profs))
	var wg sync.WaitGroup
	for i, p := range profs {
		wg.Go(func() {
			errs[i] = fetchTo(ctx, p.url, filepath.Join(e.cfg.out, p.file), time.Duration(secs+20)*time.Second)
		})
	}
	wg.Wait()
	<-done
	if werr != nil {
		return werr
	}
	rep.ProfileRPS = float64(w.Requests) / (float64(w.DurationUS) / 1e6)
	for i, p := range profs {
		if errs[i] != nil {
			return fmt.Errorf("%s profile: %w", p.name, errs[i])
		}
	}
	top := func(file string, extra ...string) string {
		args := append([]string{"tool", "pprof", "-top", "-nodecount=30"}, extra...)
		args = append(args, e.cfg.caddy, filepath.Join(e.cfg.out, file))
		out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput()
		if err != nil {
			return fmt.Sprintf("go tool pprof failed: %v\n%s", err, out)
		}
		return string(out)
	}
	rep.PprofCPU = top("gateway-cpu.pprof")
	rep.PprofCPUCum = top("gateway-cpu.pprof", "-cum")
	rep.PprofAlloc = top("gateway-allocs.pprof", "-sample_index=alloc_space")
	rep.PprofAllocObjects = top("gateway-allocs.pprof", "-sample_index=alloc_objects")
	for name, text := range map[string]string{
		"pprof-cpu.txt": rep.PprofCPU, "pprof-cpu-cum.txt": rep.PprofCPUCum,
		"pprof-alloc-space.txt": rep.PprofAlloc, "pprof-alloc-objects.txt": rep.PprofAllocObjects,
	} {
		if err := os.WriteFile(filepath.Join(e.cfg.out, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	logf("profile: gateway at %.0f req/s while profiled; top in %s", rep.ProfileRPS, filepath.Join(e.cfg.out, "pprof-cpu.txt"))
	return nil
}

func fetchTo(ctx context.Context, url, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %d %s", url, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// profileStandins takes a CPU profile of the stand-ins for most of a run
// (one second less, so it ends before the load does) into the output
// directory.
func (e *env) profileStandins(ctx context.Context, run time.Duration, name string) error {
	secs := int((run - time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", e.info.Control, secs)
	return fetchTo(ctx, url, filepath.Join(e.cfg.out, name), run+30*time.Second)
}
