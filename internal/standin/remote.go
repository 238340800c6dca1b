package standin

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// remoteEnv makes a test binary serve stand-ins (remoteMain) instead of
// running tests.
const remoteEnv = "METRICS_GATEWAY_STANDIN_SERVER"

// TestMain is the TestMain of a package whose tests use StartRemote. In a
// binary that StartRemote started, it serves the stand-ins (remoteMain);
// otherwise it runs the tests and fails the run when a test leaves a
// goroutine behind (goleak). Each of around is called before the tests,
// and what it returns after them, before the leak check.
func TestMain(m *testing.M, around ...func() (after func())) {
	if code, ok := remoteMain(); ok {
		os.Exit(code)
	}
	goleak.VerifyTestMain(aroundRun{m, around})
}

// aroundRun is a testing.M whose Run is wrapped by functions.
type aroundRun struct {
	m      *testing.M
	around []func() (after func())
}

func (r aroundRun) Run() int {
	for _, f := range r.around {
		defer f()()
	}
	return r.m.Run()
}

// remoteMain serves, when the test binary was started by StartRemote, n
// stand-ins that answer 200 without decoding, as a Cluster with its own DNS
// server; it prints their target and returns when stdin closes. ok is false
// in an ordinary test run.
func remoteMain() (code int, ok bool) {
	v := os.Getenv(remoteEnv)
	if v == "" {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		fmt.Fprintf(os.Stderr, "%s=%q: want a count of servers\n", remoteEnv, v)
		return 1, true
	}
	c, err := StartCluster("remote.test", n)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1, true
	}
	for _, d := range c.Distributors {
		d.SetBehavior(func(w http.ResponseWriter, _ *http.Request) bool {
			w.WriteHeader(http.StatusOK)
			return true
		})
	}
	fmt.Println(c.Target())
	_, _ = io.Copy(io.Discard, os.Stdin)
	c.Stop()
	return 0, true
}

// StartRemote runs n stand-ins in a child process (the test binary itself,
// whose TestMain is standin.TestMain), so that a benchmark's CPU and
// allocations are the gateway's alone, and returns the gateway's target for
// them. The child stops when the test ends.
func StartRemote(tb testing.TB, n int) string {
	tb.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), remoteEnv+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("stand-in server process: %v", err)
	}
	return strings.TrimSpace(line)
}
