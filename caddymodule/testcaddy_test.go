package caddymodule_test

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// This file: the test harness's own promises (internal/testcaddy), tested
// here because this package's TestMain is the one that can be Caddy.

// TestCaddyInASubtest: a subtest of a test that runs the in-process Caddy
// may start its own (replacing it) without waiting for a turn its parent
// holds.
func TestCaddyInASubtest(t *testing.T) {
	t.Parallel()
	testcaddy.Start(t, `[{"handler": "static_response", "body": "a"}]`)
	t.Run("second config", func(t *testing.T) {
		c := testcaddy.Start(t, `[{"handler": "static_response", "body": "b"}]`)
		if _, body, err := c.Get("/"); err != nil || string(body) != "b" {
			t.Errorf("the subtest's Caddy: %q %v", body, err)
		}
	})
}

// TestChildCaddyDiesWithTheTestBinary: a Caddy started by StartProcess
// ends with the test binary that started it, also when that binary dies
// without running its cleanups (here its -test.timeout panic).
func TestChildCaddyDiesWithTheTestBinary(t *testing.T) {
	const inner = "METRICS_GATEWAY_TEST_ORPHAN"
	if os.Getenv(inner) != "" {
		c := testcaddy.StartProcess(t, func(c *testcaddy.Caddy) string {
			return string(c.Config(`[{"handler": "static_response", "body": "ok"}]`))
		})
		fmt.Printf("CHILD_PID=%d\n", c.Process.Pid)
		select {} // until -test.timeout ends this binary
	}
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildCaddyDiesWithTheTestBinary$", "-test.timeout=5s")
	cmd.Env = append(os.Environ(), inner+"=1")
	out, _ := cmd.CombinedOutput()
	m := regexp.MustCompile(`CHILD_PID=(\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("the inner test started no Caddy:\n%s", out)
	}
	pid, _ := strconv.Atoi(string(m[1]))
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	standin.WaitFor(t, 20*time.Second, "the orphaned Caddy to be gone", func() bool {
		status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		return err != nil || regexp.MustCompile(`(?m)^State:\s+Z`).Match(status)
	})
}
