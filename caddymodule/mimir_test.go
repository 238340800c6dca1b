//go:build unix

package caddymodule_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/caddymodule"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// mimirBinaryEnv names a Mimir binary; TestRealMimirInflightLimit runs only
// when it is set (see examples/mimir/run-check.sh).
const mimirBinaryEnv = "MIMIR_BINARY"

// mimirInflightLimit is Mimir A's
// -distributor.instance-limits.max-inflight-push-requests-bytes. The gRPC
// check refuses a push when in-flight bytes + 8 × its message-size exceed
// the limit (pkg/distributor/distributor.go, checkHttpgrpcRequestSize,
// decompressionEstMultiplier = 8), so one sequential push of n bytes is
// refused when 9n > limit: here above about 7.3 KB. A push of 10 series
// (about 0.3 KB) fits; one of 2000 series (about 42 KB) does not.
const mimirInflightLimit = 64 << 10

// The metrics the test reads from Mimir's /metrics.
const (
	// Pushes refused by an instance limit, by reason; the in-flight byte
	// limit's reason (globalerror.DistributorMaxInflightPushRequestsBytes).
	mimirRejected      = "cortex_distributor_instance_rejected_requests_total"
	mimirReasonBytes   = `reason="distributor_max_inflight_push_requests_bytes"`
	mimirReceived      = "cortex_distributor_received_samples_total"
	mimirRequestsIn    = "cortex_distributor_requests_in_total"
	mimirMessageCount  = "cortex_request_message_bytes_count"
	mimirMessageSum    = "cortex_request_message_bytes_sum"
	mimirDurationCount = "cortex_request_duration_seconds_count"
	// dskit's gRPC middleware counts, under the method, every call whose
	// message the server read (message bytes) and whose handler ran
	// (duration, by status code; a push refused by the distributor's HTTP
	// handler is status_code="500" here). A call refused by the TapHandle
	// is in neither. (Tunnelled requests are not counted under the HTTP
	// route api_v1_push: httpgrpc serves the router, not the instrumented
	// HTTP server.)
	mimirHandleRoute = `route="/httpgrpc.HTTP/Handle"`
)

// TestRealMimirInflightLimit checks, against two real single-process Mimirs,
// that Mimir's gRPC in-flight push limiter (pkg/mimir/grpc_call_check.go)
// refuses pushes tunnelled by the gateway before it reads them, and that the
// gateway retries that UNAVAILABLE on the other distributor.
//
// Mimir acts on /httpgrpc.HTTP/Handle in its TapHandle only when the call's
// metadata carries httpgrpc-method (POST), httpgrpc-url (ending in
// /api/v1/push) and message-size. Without them the call is read whole, and
// the distributor's HTTP handler refuses the push after the fact, with an
// httpgrpc 500 the gateway relays unretried: the test fails then.
//
// Mimir A (127.0.0.1) has -distributor.instance-limits.
// max-inflight-push-requests-bytes=64KiB; Mimir B (127.0.0.2, same ports)
// has none. A DNS server answers one name with both addresses.
func TestRealMimirInflightLimit(t *testing.T) {
	bin := os.Getenv(mimirBinaryEnv)
	if bin == "" {
		t.Skipf("%s is not set: this test runs real Mimir processes (see examples/mimir/run-check.sh)", mimirBinaryEnv)
	}
	const ipA, ipB = "127.0.0.1", "127.0.0.2"
	httpPort := freePortOnAll(t, ipA, ipB)
	grpcPort := freePortOnAll(t, ipA, ipB)
	a := startMimir(t, bin, "A", ipA, httpPort, grpcPort,
		"-distributor.instance-limits.max-inflight-push-requests-bytes="+strconv.Itoa(mimirInflightLimit))
	b := startMimir(t, bin, "B", ipB, httpPort, grpcPort)
	a.waitReady(t)
	b.waitReady(t)

	dnsSrv, err := standin.StartDNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dnsSrv.Stop() })
	dnsSrv.SetA("distributors.test", ipA, ipB)
	dnsSrv.SetA("distributor-a.test", ipA)

	big := func(i int) []byte {
		// Distinct timestamps per push, near now so that Mimir accepts them.
		return standin.RemoteWriteBodyAt(2000, 1, time.Now().UnixMilli()+int64(i))
	}
	const bigSeries = 2000

	t.Run("retried on B", func(t *testing.T) {
		addrA, addrB := net.JoinHostPort(ipA, strconv.Itoa(grpcPort)), net.JoinHostPort(ipB, strconv.Itoa(grpcPort))
		c := startMimirGateway(t, dnsSrv.Addr(), "distributors.test", grpcPort, 2)
		beforeA, beforeB := a.scrape(t), b.scrape(t)
		const pushes = 20
		var failed []string
		var size int
		for i := 0; i < pushes; i++ {
			body := big(i)
			size = len(body)
			start := time.Now()
			resp, rb, err := push(c.Client, body)
			switch {
			case err != nil:
				failed = append(failed, fmt.Sprintf("push %d: %v", i, err))
			case resp.StatusCode/100 != 2:
				failed = append(failed, fmt.Sprintf("push %d: %s after %v: %s", i, resp.Status,
					time.Since(start).Round(time.Millisecond), strings.TrimSpace(string(rb))))
			}
		}
		afterA, afterB := a.scrape(t), b.scrape(t)
		attempts := map[string]uint64{}
		for _, bs := range backendStatuses(t, c) {
			if bs.Component == caddymodule.ComponentDistributor {
				for _, e := range bs.Endpoints {
					attempts[e.Address] = e.Requests
				}
			}
		}
		t.Logf("%d pushes of %d series (%d bytes each) through the gateway; %d not 2xx", pushes, bigSeries, size, len(failed))
		t.Logf("gateway attempts per endpoint: A %s = %d, B %s = %d", addrA, attempts[addrA], addrB, attempts[addrB])
		dA := logMimirDeltas(t, a, beforeA, afterA)
		dB := logMimirDeltas(t, b, beforeB, afterB)

		for _, f := range failed {
			t.Errorf("not retried on B: %s", f)
		}
		if attempts[addrA] == 0 {
			t.Errorf("the gateway sent nothing to A (%s); the check needs pushes to reach it", addrA)
		}
		if dA.rejectedBytes < 1 {
			t.Errorf("A counted %v pushes refused by the in-flight byte limit, want at least 1", dA.rejectedBytes)
		}
		if dA.handleCalls != 0 || dA.handleBytes != 0 {
			t.Errorf("A read %v tunnelled messages (%v bytes): the limit was not applied before the body was read "+
				"(no httpgrpc-method/httpgrpc-url/message-size metadata?)", dA.handleCalls, dA.handleBytes)
		}
		if dA.handleServed != 0 || dA.samples != 0 || dA.requestsIn != 0 {
			t.Errorf("A handled %v tunnelled calls (%v samples, %v requests in), want 0: the pushes should not get past the gRPC limiter",
				dA.handleServed, dA.samples, dA.requestsIn)
		}
		if want := float64(pushes * bigSeries); len(failed) == 0 && dB.samples != want {
			t.Errorf("B received %v samples, want %v (every push once)", dB.samples, want)
		}
	})

	t.Run("only A", func(t *testing.T) {
		c := startMimirGateway(t, dnsSrv.Addr(), "distributor-a.test", grpcPort, 1)
		before := a.scrape(t)
		// A push that fits goes through: A is up and the limit is on size.
		small := standin.RemoteWriteBodyAt(10, 1, time.Now().UnixMilli())
		resp, rb, err := push(c.Client, small)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("a push of 10 series (%d bytes) to A: %v %v %s", len(small), respStatus(resp), err, rb)
		}
		const pushes = 5
		for i := 0; i < pushes; i++ {
			body := big(100 + i)
			start := time.Now()
			resp, rb, err := push(c.Client, body)
			took := time.Since(start)
			if err != nil {
				t.Errorf("push %d: %v", i, err)
				continue
			}
			t.Logf("push %d (%d bytes): %s after %v, Retry-After %q: %s", i, len(body), resp.Status,
				took.Round(100*time.Microsecond), resp.Header.Get("Retry-After"), strings.TrimSpace(string(rb)))
			if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusTooManyRequests {
				t.Errorf("push %d over the limit: %s, want 503 (the gateway's answer to UNAVAILABLE) or 429", i, resp.Status)
			}
			if took > 5*time.Second {
				t.Errorf("push %d took %v: a refusal before the body is read should be quick", i, took)
			}
		}
		after := a.scrape(t)
		d := logMimirDeltas(t, a, before, after)
		if d.rejectedBytes < pushes {
			t.Errorf("A counted %v refusals by the in-flight byte limit, want at least %d", d.rejectedBytes, pushes)
		}
		if d.handleCalls != 1 || d.handleServed != 1 || d.samples != 10 {
			t.Errorf("A read %v tunnelled messages, handled %v calls and took %v samples; want 1, 1, 10 (the small push only)",
				d.handleCalls, d.handleServed, d.samples)
		}
	})
}

func respStatus(resp *http.Response) string {
	if resp == nil {
		return "no response"
	}
	return resp.Status
}

// startMimirGateway runs a Caddy whose distributor backend is name:grpcPort
// as resolved by the DNS server at dnsAddr, and waits until want endpoints
// are READY.
func startMimirGateway(t *testing.T, dnsAddr, name string, grpcPort, want int) *testcaddy.Caddy {
	t.Helper()
	c := testcaddy.StartCaddyfile(t, fmt.Sprintf(`:8000 {
	metrics_gateway {
		proxy {
			default http://127.0.0.1:1
			distributor dns://%s/%s:%d {
				lb_policy round_robin
				retries 2
				timeout 30s
			}
		}
	}
}
`, dnsAddr, name, grpcPort))
	standin.WaitFor(t, 30*time.Second, fmt.Sprintf("%d READY endpoints", want), func() bool {
		n := 0
		for _, bs := range backendStatuses(t, c) {
			for _, e := range bs.Endpoints {
				if e.State == "READY" {
					n++
				}
			}
		}
		return n == want
	})
	return c
}

// mimirDeltas are the changes of the metrics the test reads.
type mimirDeltas struct {
	rejectedBytes, handleCalls, handleBytes, handleServed, samples, requestsIn float64
}

func logMimirDeltas(t *testing.T, m *mimirProc, before, after string) mimirDeltas {
	t.Helper()
	delta := func(name string, labels ...string) float64 {
		return metricSum(after, name, labels...) - metricSum(before, name, labels...)
	}
	d := mimirDeltas{
		rejectedBytes: delta(mimirRejected, mimirReasonBytes),
		handleCalls:   delta(mimirMessageCount, mimirHandleRoute),
		handleBytes:   delta(mimirMessageSum, mimirHandleRoute),
		handleServed:  delta(mimirDurationCount, mimirHandleRoute),
		samples:       delta(mimirReceived),
		requestsIn:    delta(mimirRequestsIn),
	}
	t.Logf("Mimir %s (%s) during the pushes: %s{%s} +%v; %s{%s} +%v (+%v bytes); %s{%s} +%v; %s +%v; %s +%v",
		m.name, m.ip, mimirRejected, mimirReasonBytes, d.rejectedBytes,
		mimirMessageCount, mimirHandleRoute, d.handleCalls, d.handleBytes,
		mimirDurationCount, mimirHandleRoute, d.handleServed,
		mimirReceived, d.samples, mimirRequestsIn, d.requestsIn)
	for _, l := range metricLines(after, mimirDurationCount, mimirHandleRoute) {
		t.Logf("Mimir %s now: %s", m.name, l)
	}
	return d
}

// freePortOnAll returns a TCP port that is free on every one of ips (it can
// still be taken before Mimir binds it; Mimir then exits and waitReady says
// so).
func freePortOnAll(t *testing.T, ips ...string) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		l, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		ls := []net.Listener{l}
		for _, ip := range ips[1:] {
			if l2, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port))); err == nil {
				ls = append(ls, l2)
			}
		}
		for _, l := range ls {
			l.Close()
		}
		if len(ls) == len(ips) {
			return port
		}
	}
	t.Fatalf("no port free on all of %v", ips)
	return 0
}

// mimirProc is a single-process Mimir (-target=all) started by the test.
type mimirProc struct {
	name, ip string
	httpURL  string
	logPath  string
	cmd      *exec.Cmd
	exited   chan struct{}
	waitErr  error
}

// startMimir starts a single-process Mimir on ip with everything it needs on
// its own: rings on the in-memory KV store (no memberlist), replication
// factor 1, blocks, rules and alertmanager state on the filesystem in a
// temporary directory, tenants from X-Scope-OrgID. It is killed (its whole
// process group) when the test ends.
func startMimir(t *testing.T, bin, name, ip string, httpPort, grpcPort int, extra ...string) *mimirProc {
	t.Helper()
	dir := t.TempDir()
	args := []string{
		"-target=all",
		"-auth.multitenancy-enabled=true",
		"-server.http-listen-address=" + ip, "-server.http-listen-port=" + strconv.Itoa(httpPort),
		"-server.grpc-listen-address=" + ip, "-server.grpc-listen-port=" + strconv.Itoa(grpcPort),
		"-query-frontend.instance-addr=" + ip,
		"-memberlist.bind-addr=" + ip,
		"-ingester.ring.replication-factor=1",
		"-ingester.ring.min-ready-duration=0s",
		"-ingester.partition-ring.store=inmemory",
		"-store-gateway.sharding-ring.replication-factor=1",
		"-blocks-storage.backend=filesystem",
		"-blocks-storage.filesystem.dir=" + filepath.Join(dir, "blocks"),
		"-blocks-storage.tsdb.dir=" + filepath.Join(dir, "tsdb"),
		"-blocks-storage.bucket-store.sync-dir=" + filepath.Join(dir, "sync"),
		"-compactor.data-dir=" + filepath.Join(dir, "compactor"),
		"-ruler-storage.backend=filesystem",
		"-ruler-storage.filesystem.dir=" + filepath.Join(dir, "rules"),
		"-ruler.rule-path=" + filepath.Join(dir, "ruler"),
		"-alertmanager-storage.backend=filesystem",
		"-alertmanager-storage.filesystem.dir=" + filepath.Join(dir, "alertmanager-storage"),
		"-alertmanager.storage.path=" + filepath.Join(dir, "alertmanager"),
		"-activity-tracker.filepath=" + filepath.Join(dir, "activity.log"),
		"-usage-stats.enabled=false",
		"-log.level=warn",
	}
	for _, ring := range []string{"alertmanager.sharding-ring", "compactor.ring", "distributor.ring", "ingester.ring",
		"overrides-exporter.ring", "querier.ring", "query-scheduler.ring", "ruler.ring", "store-gateway.sharding-ring"} {
		args = append(args, "-"+ring+".store=inmemory", "-"+ring+".instance-addr="+ip)
	}
	args = append(args, extra...)
	m := &mimirProc{
		name: name, ip: ip,
		httpURL: "http://" + net.JoinHostPort(ip, strconv.Itoa(httpPort)),
		logPath: filepath.Join(dir, "mimir.log"),
		exited:  make(chan struct{}),
	}
	logFile, err := os.Create(m.logPath)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(bin, args...)
	m.cmd.Dir = dir
	m.cmd.Stdout, m.cmd.Stderr = logFile, logFile
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting Mimir %s: %v", name, err)
	}
	t.Logf("Mimir %s: pid %d, HTTP %s, gRPC %s:%d, flags: %s", name, m.cmd.Process.Pid, m.httpURL, ip, grpcPort, strings.Join(extra, " "))
	go func() {
		m.waitErr = m.cmd.Wait()
		logFile.Close()
		close(m.exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-m.exited:
		case <-time.After(30 * time.Second):
			t.Errorf("Mimir %s (pid %d) did not exit after SIGKILL", name, m.cmd.Process.Pid)
		}
		if t.Failed() {
			m.logTail(t, 30)
		}
	})
	return m
}

// waitReady polls /ready until it answers 200 (2 minutes at most: two
// Mimirs starting on a busy machine), failing at once if Mimir exits.
func (m *mimirProc) waitReady(t *testing.T) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(2 * time.Minute)
	client := &http.Client{Timeout: 5 * time.Second}
	var last string
	for {
		select {
		case <-m.exited:
			m.logTail(t, 30)
			t.Fatalf("Mimir %s exited before it was ready: %v", m.name, m.waitErr)
		default:
		}
		resp, err := client.Get(m.httpURL + "/ready")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				t.Logf("Mimir %s ready after %v", m.name, time.Since(start).Round(100*time.Millisecond))
				return
			}
			last = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(b))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			m.logTail(t, 30)
			t.Fatalf("Mimir %s not ready within 2m; last /ready: %s", m.name, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// scrape returns Mimir's /metrics.
func (m *mimirProc) scrape(t *testing.T) string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(m.httpURL + "/metrics")
	if err != nil {
		t.Fatalf("scraping Mimir %s: %v", m.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scraping Mimir %s: %s %v", m.name, resp.Status, err)
	}
	return string(b)
}

// logTail logs the last n lines of Mimir's output.
func (m *mimirProc) logTail(t *testing.T, n int) {
	b, err := os.ReadFile(m.logPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Logf("Mimir %s log: %v", m.name, err)
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	t.Logf("Mimir %s log (last %d lines):\n%s", m.name, len(lines), strings.Join(lines, "\n"))
}
