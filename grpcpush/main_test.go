package grpcpush

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

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// serverModeEnv makes the test binary act as a stand-in endpoint (see
// startRemoteServer) instead of running tests.
const serverModeEnv = "GRPCPUSH_STANDIN_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(serverModeEnv) != "" {
		os.Exit(runStandinServer())
	}
	os.Exit(m.Run())
}

// runStandinServer serves n stand-ins (n from serverModeEnv) that answer 200
// without decoding, as a standin.Cluster with its own DNS server, prints the
// gateway's target for them and stops when stdin closes.
func runStandinServer() int {
	n, err := strconv.Atoi(os.Getenv(serverModeEnv))
	if err != nil || n < 1 {
		fmt.Fprintf(os.Stderr, "%s=%q: want a count of servers\n", serverModeEnv, os.Getenv(serverModeEnv))
		return 1
	}
	c, err := standin.StartCluster("remote.test", n)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
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
	return 0
}

// startRemoteTarget runs n stand-in endpoints in a child process, so that a
// benchmark's allocations and CPU are the gateway's alone. It returns the
// gateway's target for them.
func startRemoteTarget(tb testing.TB, n int) string {
	tb.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), serverModeEnv+"="+strconv.Itoa(n))
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
