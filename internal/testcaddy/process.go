package testcaddy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// childEnv marks a test binary started by StartProcess: its TestMain runs
// Caddy's command line instead of the tests.
const childEnv = "TESTCADDY_CHILD"

// TestMain is the TestMain of a package whose tests use StartProcess. In a
// binary that StartProcess started it is `caddy` (the arguments are
// Caddy's). Otherwise it runs the tests, all parallel ones at once unless
// -parallel says otherwise: they wait (for their turn at the in-process
// Caddy, on timers, on a child process) far more than they compute, and
// the default of one per CPU would leave a test that waits 30 s on a
// child process queued behind ones waiting for their turn.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		caddycmd.Main() // exits
	}
	standin.SetDefaultParallel(1000)
	os.Exit(m.Run())
}

// Process is the child process of a Caddy started by StartProcess.
type Process struct {
	*os.Process
	exited chan struct{}
	output lockedBuffer
}

// Exited is closed once the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Output is what the process has written to stdout and stderr so far.
func (p *Process) Output() string { return p.output.String() }

// StartCaddyfileProcess is StartCaddyfile in a child process (see
// StartProcess).
func StartCaddyfileProcess(t testing.TB, caddyfile string) *Caddy {
	t.Helper()
	return startProcess(t, func(c *Caddy) ([]byte, error) { return c.Adapt(caddyfile) })
}

// StartProcess runs `caddy run` with the full JSON config that config
// returns in a child process: this test binary again, whose TestMain is
// testcaddy.TestMain. Such a Caddy shares no state with the one in the test
// process, so a test using it need not wait its turn (see Start) and can
// count the goroutines and descriptors of Caddy alone. The process is
// stopped when the test ends, if it has not exited.
func StartProcess(t testing.TB, config func(c *Caddy) string) *Caddy {
	t.Helper()
	return startProcess(t, func(c *Caddy) ([]byte, error) { return []byte(config(c)), nil })
}

func startProcess(t testing.TB, config func(c *Caddy) ([]byte, error)) *Caddy {
	t.Helper()
	c := newCaddy(t)
	cfg, err := config(c)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	file := filepath.Join(c.Dir, "caddy.json")
	if err := os.WriteFile(file, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "run", "--config", file)
	// Killed with the test binary, also when it dies without cleanups
	// (a -timeout panic, SIGKILL).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &Process{exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &p.output, &p.output
	// Caddy's storage and autosave stay in the test's directory.
	cmd.Env = append(os.Environ(), childEnv+"=1", "HOME="+c.Dir, "XDG_DATA_HOME="+c.Dir, "XDG_CONFIG_HOME="+c.Dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.Process = cmd.Process
	c.Process = p
	go func() { _ = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.stop(t) })
	deadline := time.Now().Add(60 * time.Second)
	for {
		if code, _, err := c.AdminGet("/config/"); err == nil && code == 200 {
			return c
		}
		select {
		case <-p.exited:
			t.Fatalf("caddy exited at start:\n%s", p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy's admin endpoint did not answer in 60s:\n%s", p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the process as an operator would (SIGTERM: Caddy drains and
// exits), killing it if it is still running after a minute, and fails the
// test if the race detector reported a race in it (a child's report does
// not fail the test by itself).
func (p *Process) stop(t testing.TB) {
	select {
	case <-p.exited:
	default:
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(time.Minute):
			t.Errorf("caddy still running a minute after SIGTERM; killed:\n%s", p.Output())
			_ = p.Kill()
			<-p.exited
		}
	}
	if out := p.Output(); strings.Contains(out, "WARNING: DATA RACE") {
		t.Errorf("the race detector reported in the caddy process:\n%s", out)
	}
}

// Goroutines counts the goroutines of the Caddy process (from the admin
// endpoint's goroutine profile).
func (c *Caddy) Goroutines() (int, error) {
	code, body, err := c.AdminGet("/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	line, _, _ := bufio.NewReader(bytes.NewReader(body)).ReadLine()
	n, ok := strings.CutPrefix(string(line), "goroutine profile: total ")
	if code != 200 || !ok {
		return 0, fmt.Errorf("GET /debug/pprof/goroutine: %d %q", code, line)
	}
	return strconv.Atoi(n)
}

// FDs counts the open file descriptors of the Caddy process.
func (c *Caddy) FDs() (int, error) {
	pid := "self"
	if c.Process != nil {
		pid = strconv.Itoa(c.Process.Pid)
	}
	fds, err := os.ReadDir("/proc/" + pid + "/fd")
	return len(fds), err
}

// lockedBuffer collects a process's output, read while it is written.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
