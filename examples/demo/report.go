package main

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// progress writes a phase's progress line: overwritten in place on a
// terminal, one line per update otherwise.
type progress struct {
	out      io.Writer
	terminal bool
	name     string
	total    time.Duration
	width    int // of the last line written on a terminal
}

func (p *progress) update(elapsed time.Duration, pushes, failed int64, per []Count) {
	elapsed = min(elapsed, p.total)
	line := fmt.Sprintf("  %-7s %5.1fs/%s  pushes %s  failed %d  requests per distributor %s",
		p.name, elapsed.Seconds(), p.total, thousands(pushes), failed, perDistributor(per))
	if !p.terminal {
		fmt.Fprintln(p.out, line)
		return
	}
	pad := max(p.width-len(line), 0)
	p.width = len(line)
	fmt.Fprintf(p.out, "\r%s%s", line, strings.Repeat(" ", pad))
}

// done ends the phase's progress output.
func (p *progress) done() {
	if p.terminal && p.width > 0 {
		fmt.Fprintln(p.out)
	}
}

// perDistributor lists the requests of each distributor, or their range
// when there are too many for one line.
func perDistributor(per []Count) string {
	if len(per) > 8 {
		lo, hi := per[0].Requests, per[0].Requests
		for _, c := range per {
			lo, hi = min(lo, c.Requests), max(hi, c.Requests)
		}
		return fmt.Sprintf("%s to %s", thousands(lo), thousands(hi))
	}
	s := make([]string, len(per))
	for i, c := range per {
		s[i] = thousands(c.Requests)
	}
	return strings.Join(s, " ")
}

// writeReport writes the two distributions side by side.
func writeReport(out io.Writer, r *Result) {
	g, p := r.Gateway, r.Pinned
	wName := len("distributor")
	wReq, wSam, wConn := len("requests"), len("samples"), len("clients")
	for i := range g.PerDistributor {
		wName = max(wName, len(g.PerDistributor[i].Name))
		for _, c := range []Count{g.PerDistributor[i], p.PerDistributor[i]} {
			wReq = max(wReq, len(thousands(c.Requests)))
			wSam = max(wSam, len(thousands(c.Samples)))
		}
	}
	const gap = "   "
	wGateway := wReq + 2 + wSam
	fmt.Fprintf(out, "%-*s%s%-*s%s%s\n", wName, "", gap, wGateway, "through the gateway", gap, "pinned, like a Service")
	fmt.Fprintf(out, "%-*s%s%*s  %*s%s%*s  %*s  %*s\n", wName, "distributor", gap,
		wReq, "requests", wSam, "samples", gap, wConn, "clients", wReq, "requests", wSam, "samples")
	for i := range g.PerDistributor {
		gc, pc := g.PerDistributor[i], p.PerDistributor[i]
		fmt.Fprintf(out, "%-*s%s%*s  %*s%s%*d  %*s  %*s\n", wName, gc.Name, gap,
			wReq, thousands(gc.Requests), wSam, thousands(gc.Samples), gap,
			wConn, pc.Connections, wReq, thousands(pc.Requests), wSam, thousands(pc.Samples))
	}
	fmt.Fprintf(out, "%-*s%s%*s%s%*s\n", wName, "max/mean", gap,
		wGateway, ratio(g.MaxMean()), gap, wConn+2+wReq+2+wSam, ratio(p.MaxMean()))
	fmt.Fprintf(out, "\nmax/mean of samples per distributor (1.00 is perfectly even): %s (gateway) vs %s (pinned)\n",
		ratio(g.MaxMean()), ratio(p.MaxMean()))
	fmt.Fprintf(out, "pushes: %s through the gateway, %s pinned, %d failed\n",
		thousands(g.Pushes), thousands(p.Pushes), r.Failed())
	fmt.Fprintln(out, "(everything shares this machine's CPUs, so compare the spread, not the totals)")
	for _, ph := range []Phase{g, p} {
		if ph.Failed > 0 {
			fmt.Fprintf(out, "  %s: %d failed, the first with: %s\n", ph.Name, ph.Failed, ph.FirstError)
		}
	}
}

func ratio(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// thousands formats n with comma separators: 1234567 → 1,234,567.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
