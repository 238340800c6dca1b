package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// sickSystems are compared with one sick stand-in: round_robin, least_conn
// and least_conn with passive health checks of the gateway, against nginx
// and Caddy's reverse_proxy configured for the same.
var sickSystems = []string{sysGateway, sysGatewayLC, sysGatewayHealth, sysNginxHealth, sysCaddyLC, sysCaddyHealth}

// sickScenarios are the sick phase: all stand-ins healthy (what least_conn
// and passive health cost), the second one 20 ms slow, the second one
// answering 503 to everything.
var sickScenarios = []struct {
	phase, sickness string
	systems         []string
	// health is the passive health check of gateway-health and
	// caddy-lc-health in this scenario; nginxHealth says nginx's.
	health, nginxHealth string
}{
	{"sick-healthy", sickNone, []string{sysGateway, sysGatewayLC, sysGatewayHealth}, statusHealth, ""},
	{"sick-slow", sickSlow, sickSystems, latencyHealth, nginxHealthText},
	{"sick-503", sick503, sickSystems, statusHealth, nginxHealthText},
}

// The passive health checks of the sick phase.
const (
	statusHealth = `
				fail_duration     5s
				max_fails         3
				unhealthy_status  5xx`
	latencyHealth = `
				fail_duration     5s
				max_fails         3
				unhealthy_latency 15ms`
	nginxHealthText = "`max_fails=3 fail_timeout=5s`, `proxy_next_upstream error timeout http_503 non_idempotent` (nginx has no latency rule)"
)

// runSick runs the sick phase: count-only stand-ins, -connections
// keep-alive connections, -sick-duration per run, systems alternating.
func (e *env) runSick(ctx context.Context, rep *report, body int) error {
	saved := e.cfg.duration
	e.cfg.duration = e.cfg.sickDuration
	defer func() { e.cfg.duration = saved }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = e.setSick(ctx, sickNone)
	}()
	for _, sc := range sickScenarios {
		if !e.cfg.sickScenarios[sc.phase] {
			continue
		}
		if err := e.setSick(ctx, sc.sickness); err != nil {
			return err
		}
		e.passiveHealth = sc.health
		for r := 1; r <= e.cfg.repeats; r++ {
			for _, sys := range sc.systems {
				rep.add(e.measure(ctx, runSpec{phase: sc.phase, system: sys, body: body, rep: r, work: workCount, conns: e.cfg.connections}))
			}
		}
	}
	return nil
}

// sickTitles head the sick phase's tables.
var sickTitles = map[string]string{
	"sick-healthy": "three healthy stand-ins: what least_conn and passive health cost",
	"sick-slow":    "the second stand-in answers 20 ms late",
	"sick-503":     "the second stand-in answers 503 to everything",
}

// sickMarkdown writes one table per sick scenario.
func (r *report) sickMarkdown(body int) string {
	if !r.cfg.phases["sick"] {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Sick stand-ins: %d keep-alive connections, body %d, stand-ins count, %s per run, medians of %d runs\n\n",
		r.cfg.connections, body, r.cfg.sickDuration, r.cfg.repeats)
	for _, sc := range sickScenarios {
		if !r.cfg.sickScenarios[sc.phase] {
			continue
		}
		fmt.Fprintf(&b, "### %s\n\n", sickTitles[sc.phase])
		fmt.Fprintf(&b, "Passive health of gateway-health and caddy-lc-health: `%s`", healthWords(sc.health))
		if sc.nginxHealth != "" {
			fmt.Fprintf(&b, "; nginx-health: %s", sc.nginxHealth)
		}
		b.WriteString(".\n\n")
		b.WriteString("| system | req/s | p50 ms | p99 ms | failed requests (non-2xx + socket errors) | failed % | per-stand-in requests | sick share ÷ others' mean | max/mean | proxy CPU-s / 1k req |\n" +
			"|---|---:|---:|---:|---:|---:|---|---:|---:|---:|\n")
		for _, sys := range sc.systems {
			s := r.median(sc.phase, sys, body)
			if s == nil {
				fmt.Fprintf(&b, "| %s | failed (%d runs) |||||||||\n", sys, r.failures(sc.phase, sys, body))
				continue
			}
			failed := s.Non2xx + s.SocketErrors // summed over the runs
			var total int64
			for _, x := range r.Samples {
				if x.Phase == sc.phase && x.System == sys && x.Err == "" {
					total += x.Requests
				}
			}
			pct := 0.0
			if total > 0 {
				pct = 100 * float64(failed) / float64(total)
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.2f | %.2f | %d | %.2f | %s | %.2f | %.3f | %.3f |\n", sys, s.RPS, s.P50US/1000, s.P99US/1000,
				failed, pct, perStandin(s), sickShare(s.PerStandin), s.MaxOverMean, s.CPUPer1k)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// sickShare is the second stand-in's requests over the others' mean.
func sickShare(per []int64) float64 {
	if len(per) < 2 {
		return 0
	}
	var others int64
	for i, n := range per {
		if i != 1 {
			others += n
		}
	}
	if others == 0 {
		return 0
	}
	return float64(per[1]) / (float64(others) / float64(len(per)-1))
}

// healthWords is a passive health block on one line: "a 1; b 2".
func healthWords(block string) string {
	var lines []string
	for _, l := range strings.Split(block, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			lines = append(lines, strings.Join(f, " "))
		}
	}
	return strings.Join(lines, "; ")
}
