package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// Caddy is process-wide: the tests here run one demo at a time (no
// t.Parallel).

// testConfig is a short run of the default demo.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Duration = 2 * time.Second
	cfg.Progress = 250 * time.Millisecond
	// Round-robin leaves the distributors at most a request or so apart, so
	// max/mean <= 1.05 needs some 20 requests per distributor or more. Under
	// the race detector on a busy machine decoding a push is slow: smaller
	// pushes keep the request count high.
	cfg.Samples = 200
	return cfg
}

// goroutineMargin allows for goroutines the first Caddy in a process leaves
// behind on purpose (global caches, the logger's writers).
const goroutineMargin = 8

func TestDemo(t *testing.T) {
	base := standin.NumGoroutines()
	cfg := testConfig()
	var out bytes.Buffer
	res, err := run(context.Background(), cfg, &out)
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("run: %v", err)
	}

	if n := res.Failed(); n > 0 {
		t.Errorf("%d pushes failed (gateway: %q, pinned: %q)", n, res.Gateway.FirstError, res.Pinned.FirstError)
	}
	for _, ph := range []Phase{res.Gateway, res.Pinned} {
		if len(ph.PerDistributor) != cfg.Distributors {
			t.Fatalf("%s: %d distributors in the result, want %d", ph.Name, len(ph.PerDistributor), cfg.Distributors)
		}
		var requests int64
		for _, c := range ph.PerDistributor {
			if c.Requests == 0 || c.Samples == 0 {
				t.Errorf("%s: %s got no traffic: %+v", ph.Name, c.Name, c)
			}
			if c.Samples != c.Requests*int64(cfg.Samples) {
				t.Errorf("%s: %s: %d samples in %d requests, want %d per request", ph.Name, c.Name, c.Samples, c.Requests, cfg.Samples)
			}
			requests += c.Requests
		}
		// Every push the clients counted reached a distributor, and nothing else did.
		if requests != ph.Pushes+ph.Failed {
			t.Errorf("%s: distributors got %d requests, clients sent %d", ph.Name, requests, ph.Pushes+ph.Failed)
		}
		// Keep-alive clients: one connection each for the whole phase.
		// Go's HTTP client drops a connection when the end of its request
		// write is reported more than 50 ms after the response (its
		// maxWriteWaitBeforeConnReuse), which happens on a machine loaded
		// far beyond its cores; it then dials again.
		if ph.Dials < int64(cfg.Clients) || ph.Dials > 2*int64(cfg.Clients) {
			t.Errorf("%s: clients opened %d connections, want %d (one each)", ph.Name, ph.Dials, cfg.Clients)
		}
	}
	redialed := res.Pinned.Dials != int64(cfg.Clients)

	// The gateway spreads requests, whatever the connections.
	if mm := res.Gateway.MaxMean(); !(mm <= 1.05) {
		t.Errorf("gateway max/mean = %.3f, want <= 1.05 (%+v)", mm, res.Gateway.PerDistributor)
	}
	// Pinned, 4 connections on 3 distributors land 2/1/1, so one distributor
	// gets about twice the others' load: max/mean near 1.5.
	var conns int64
	for _, c := range res.Pinned.PerDistributor {
		conns += c.Connections
	}
	if conns != res.Pinned.Dials {
		t.Errorf("pinned: %d client connections reached the distributors, clients dialed %d", conns, res.Pinned.Dials)
	}
	if redialed {
		// The 2/1/1 spread needs exactly one connection per client.
		t.Logf("pinned: clients re-dialed (%d connections for %d clients); the pinned spread is not checked", res.Pinned.Dials, cfg.Clients)
	} else {
		for _, c := range res.Pinned.PerDistributor {
			if c.Connections < 1 || c.Connections > 2 {
				t.Errorf("pinned: %s got %d client connections, want 1 or 2 (round-robin)", c.Name, c.Connections)
			}
		}
		if mm := res.Pinned.MaxMean(); !(mm >= 1.2) {
			t.Errorf("pinned max/mean = %.3f, want about 1.5 (at least 1.2)", mm)
		}
	}

	// The report shows both distributions.
	text := out.String()
	for _, want := range []string{
		"Phase 1", "Phase 2", "distributor-1", "distributor-3",
		"max/mean of samples per distributor",
		"(gateway) vs", "(pinned)", ", 0 failed",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if !regexp.MustCompile(`gateway +[0-9.]+s/1s +pushes [0-9,]+ +failed 0`).MatchString(text) {
		t.Errorf("output lacks a gateway progress line")
	}

	// Everything the demo started is stopped: the admin socket's directory
	// is gone and the goroutines wind down.
	sock := regexp.MustCompile(`--unix-socket (\S+)`).FindStringSubmatch(text)
	if sock == nil {
		t.Fatal("output lacks the admin socket")
	}
	if _, err := os.Stat(filepath.Dir(sock[1])); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the demo's temporary directory is still there: %v", err)
	}
	standin.WaitGoroutines(t, base, goroutineMargin)
}

// cancelOn cancels a context once the output contains a string.
type cancelOn struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	cancel context.CancelFunc
}

func (w *cancelOn) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.marker) {
		w.cancel()
	}
	return len(p), nil
}

// TestDemoInterrupted stops the demo in the middle of the gateway phase, as
// Ctrl-C does: it returns promptly, stops everything, and the next run can
// start its own Caddy.
func TestDemoInterrupted(t *testing.T) {
	base := standin.NumGoroutines()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := testConfig()
	cfg.Duration = 10 * time.Minute
	w := &cancelOn{marker: "gateway ", cancel: cancel}
	start := time.Now()
	_, err := run(ctx, cfg, w)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run returned %v, want context.Canceled\noutput:\n%s", err, w.buf.String())
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("run took %s after being interrupted", d)
	}
	standin.WaitGoroutines(t, base, goroutineMargin)

	// Caddy was stopped: a new demo can load its own.
	cfg = testConfig()
	cfg.Duration = 400 * time.Millisecond
	cfg.Progress = 0
	var out bytes.Buffer
	res, err := run(context.Background(), cfg, &out)
	if err != nil {
		t.Fatalf("second run: %v\n%s", err, out.String())
	}
	if res.Failed() > 0 {
		t.Errorf("second run: %d pushes failed: %q %q", res.Failed(), res.Gateway.FirstError, res.Pinned.FirstError)
	}
}

func TestConfigCheck(t *testing.T) {
	for _, tc := range []struct {
		edit func(*Config)
		want string // "" = valid
	}{
		{func(*Config) {}, ""},
		{func(c *Config) { c.Listen = "127.0.0.1:8000" }, ""},
		{func(c *Config) { c.Listen = "127.1.2.3:0" }, ""},
		{func(c *Config) { c.Listen = "0.0.0.0:8000" }, "loopback only"},
		{func(c *Config) { c.Listen = ":8000" }, "loopback only"},
		{func(c *Config) { c.Listen = "[::1]:8000" }, "loopback only"},
		{func(c *Config) { c.Listen = "localhost" }, "-listen"},
		{func(c *Config) { c.Listen = "127.0.0.1:http" }, "bad port"},
		{func(c *Config) { c.Clients = 0 }, "-clients"},
		{func(c *Config) { c.Distributors = 251 }, "-distributors"},
		{func(c *Config) { c.Samples = 0 }, "-samples"},
		{func(c *Config) { c.Duration = time.Millisecond }, "-duration"},
	} {
		cfg := DefaultConfig()
		tc.edit(&cfg)
		err := cfg.check()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: unexpected error %v", cfg, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: error %v, want one containing %q", cfg, err, tc.want)
		}
	}
}

func TestReportFormatting(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -4200: "-4,200"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
	p := Phase{PerDistributor: []Count{{Samples: 200}, {Samples: 100}, {Samples: 100}, {Samples: 0}}}
	if got := p.MaxMean(); got != 2 {
		t.Errorf("MaxMean = %v, want 2", got)
	}
	if got := ratio((Phase{PerDistributor: []Count{{}, {}}}).MaxMean()); got != "n/a" {
		t.Errorf("max/mean without samples = %q, want n/a", got)
	}
}
