package caddymodule_test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// buildCaddy builds cmd/caddy into dir.
func buildCaddy(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "caddy")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, "../cmd/caddy")...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	return bin
}

// TestGracefulDrain runs the built binary with shutdown_delay and sends it
// SIGTERM while a client pushes: during the delay /ready answers 503 and
// every push sent is served; the process exits within delay + grace.
func TestGracefulDrain(t *testing.T) {
	const delay, grace = 3 * time.Second, 5 * time.Second
	cl := startCluster(t, 1)
	dir, err := os.MkdirTemp("", "mg") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := buildCaddy(t, dir)
	httpSock := filepath.Join(dir, "http.sock")
	cfg := fmt.Sprintf(`{
		"admin": {"listen": "unix/%s", "config": {"persist": false}},
		"logging": {"logs": {"default": {"level": "WARN"}}},
		"apps": {"http": {"shutdown_delay": %q, "grace_period": %q, "servers": {"gateway": {
			"listen": ["unix/%s"], "automatic_https": {"disable": true},
			"routes": [{"handle": %s}]}}}}}`,
		filepath.Join(dir, "admin.sock"), delay.String(), grace.String(), httpSock, cl.handlerJSON(""))
	cfgFile := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var output bytes.Buffer
	cmd := exec.Command(bin, "run", "--config", cfgFile)
	cmd.Stdout, cmd.Stderr = &output, &output
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed when the process has exited
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	// Probes use a new connection each, as the kubelet does.
	probeTransport := testcaddy.UnixTransport(httpSock)
	probeTransport.DisableKeepAlives = true
	probe := &http.Client{Transport: probeTransport, Timeout: 10 * time.Second}
	ready := func() int {
		resp, err := probe.Get("http://gateway/ready")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	standin.WaitFor(t, 20*time.Second, "the gateway to be ready", func() bool { return ready() == http.StatusOK })

	pushClient := &http.Client{Transport: testcaddy.UnixTransport(httpSock), Timeout: 30 * time.Second}
	t.Cleanup(pushClient.CloseIdleConnections)
	body := standin.RemoteWriteBody(10, 1)
	type result struct {
		sent time.Time
		err  error
	}
	var mu sync.Mutex
	var results []result
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			sent := time.Now()
			resp, b, err := push(pushClient, body)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%s: %s", resp.Status, b)
			}
			mu.Lock()
			results = append(results, result{sent, err})
			mu.Unlock()
			time.Sleep(10 * time.Millisecond) // a client's pace, not synchronisation
		}
	})

	sigterm := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	standin.WaitFor(t, 20*time.Second, "/ready to answer 503", func() bool { return ready() == http.StatusServiceUnavailable })
	if since := time.Since(sigterm); since >= delay {
		t.Errorf("/ready answered 503 only after %v, not within the shutdown delay %v", since, delay)
	}

	select {
	case <-exited:
	case <-time.After(delay + grace + 10*time.Second):
		t.Fatalf("still running %v after SIGTERM\n%s", delay+grace+10*time.Second, output.String())
	}
	exitAfter := time.Since(sigterm)
	close(stop)
	wg.Wait()
	if exitAfter > delay+grace+2*time.Second {
		t.Errorf("exited %v after SIGTERM, want within delay + grace (%v)", exitAfter, delay+grace)
	}

	// Pushes sent during the delay (with a second's margin before the
	// listener closes) were all served.
	var during, failed int
	for _, r := range results {
		if r.sent.After(sigterm) && r.sent.Before(sigterm.Add(delay-time.Second)) {
			during++
			if r.err != nil {
				failed++
				t.Errorf("push sent %v after SIGTERM failed: %v", r.sent.Sub(sigterm), r.err)
			}
		}
	}
	if during == 0 {
		t.Fatalf("no push was sent during the shutdown delay")
	}
	t.Logf("%d pushes during the shutdown delay, %d failed; exit %v after SIGTERM", during, failed, exitAfter)
}
