package grpcpush

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/examples/standin"
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

// runStandinServer serves a stand-in that answers 200 without decoding on
// 127.0.0.2:0, prints its address and stops when stdin closes.
func runStandinServer() int {
	d := standin.NewDistributor("remote")
	d.SetBehavior(func(w http.ResponseWriter, _ *http.Request) bool {
		w.WriteHeader(http.StatusOK)
		return true
	})
	s, err := standin.StartGRPC(standin.GroupIP(0)+":0", d)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(s.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	s.Stop()
	return 0
}

// startRemoteServer runs a stand-in endpoint in a child process, so that a
// benchmark's allocations are the gateway's alone. It returns its address.
func startRemoteServer(tb testing.TB) string {
	tb.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), serverModeEnv+"=1")
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
