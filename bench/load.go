package main

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

//go:embed push.lua
var pushLua []byte

// wrkResult is what push.lua's done() prints.
type wrkResult struct {
	Requests   int64   `json:"requests"`
	DurationUS int64   `json:"duration_us"`
	Bytes      int64   `json:"bytes"`
	ErrConnect int64   `json:"err_connect"`
	ErrRead    int64   `json:"err_read"`
	ErrWrite   int64   `json:"err_write"`
	ErrStatus  int64   `json:"err_status"`
	ErrTimeout int64   `json:"err_timeout"`
	P50US      float64 `json:"p50_us"`
	P90US      float64 `json:"p90_us"`
	P99US      float64 `json:"p99_us"`
	MaxUS      float64 `json:"max_us"`
	MeanUS     float64 `json:"mean_us"`
	CPUSeconds float64 `json:"-"` // wrk's own user+system time
}

// loadSpec is one wrk invocation.
type loadSpec struct {
	url         string
	connections int
	threads     int
	duration    time.Duration
	bodyPath    string
	delayMS     int    // per-connection pause after each response (0 = closed loop at full speed)
	auth        string // Authorization header instead of X-Scope-OrgID, if set
}

// runWrk runs wrk pinned to the load CPU and returns its summary.
func (e *env) runWrk(ctx context.Context, s loadSpec) (wrkResult, error) {
	threads := s.threads
	if threads <= 0 {
		threads = 1
	}
	if threads > s.connections {
		threads = s.connections
	}
	secs := int(s.duration.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	args := []string{"-c", strconv.Itoa(e.cfg.loadCPU), e.cfg.wrk,
		"-t", strconv.Itoa(threads), "-c", strconv.Itoa(s.connections),
		"-d", strconv.Itoa(secs) + "s", "--timeout", "10s", "--latency",
		"-s", e.luaPath, s.url}
	// Bounded: wrk stops itself after -d; this is the safety net.
	ctx, cancel := context.WithTimeout(ctx, s.duration+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "taskset", args...)
	cmd.Env = append(cmd.Environ(), "BENCH_BODY="+s.bodyPath, "BENCH_DELAY_MS="+strconv.Itoa(s.delayMS), "BENCH_AUTH="+s.auth)
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %w: %s %s", err, errb.String(), out.String())
	}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "WRKJSON "); ok {
			var r wrkResult
			if err := json.Unmarshal([]byte(rest), &r); err != nil {
				return wrkResult{}, fmt.Errorf("wrk summary %q: %w", rest, err)
			}
			r.CPUSeconds = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
			return r, nil
		}
	}
	return wrkResult{}, fmt.Errorf("wrk printed no summary: %s %s", out.String(), errb.String())
}
