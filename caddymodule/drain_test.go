package caddymodule_test

import (
	"fmt"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// TestGracefulDrain runs Caddy's command line (`caddy run`) in a process
// of its own with shutdown_delay and sends it SIGTERM while a client
// pushes: during the delay /ready answers 503 and every push sent is
// served; the process exits within delay + grace.
func TestGracefulDrain(t *testing.T) {
	t.Parallel()
	const delay, grace = 3 * time.Second, 5 * time.Second
	cl := startCluster(t, 1)
	c := testcaddy.StartProcess(t, func(c *testcaddy.Caddy) string {
		return fmt.Sprintf(`{
		"admin": {"listen": "unix/%s", "config": {"persist": false}},
		"logging": {"logs": {"default": {"level": "WARN"}}},
		"apps": {"http": {"shutdown_delay": %q, "grace_period": %q, "servers": {"gateway": {
			"listen": ["unix/%s"], "automatic_https": {"disable": true},
			"routes": [{"handle": %s}]}}}}}`,
			c.AdminSock, delay.String(), grace.String(), c.HTTPSock, cl.handlerJSON(""))
	})
	httpSock, proc := c.HTTPSock, c.Process

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
	if err := proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	standin.WaitFor(t, 20*time.Second, "/ready to answer 503", func() bool { return ready() == http.StatusServiceUnavailable })
	if since := time.Since(sigterm); since >= delay {
		t.Errorf("/ready answered 503 only after %v, not within the shutdown delay %v", since, delay)
	}

	select {
	case <-proc.Exited():
	case <-time.After(delay + grace + 10*time.Second):
		t.Fatalf("still running %v after SIGTERM\n%s", delay+grace+10*time.Second, proc.Output())
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
