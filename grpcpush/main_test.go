package grpcpush

import (
	"os"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

func TestMain(m *testing.M) {
	if code, ok := standin.RemoteMain(); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// startRemoteTarget runs n stand-in endpoints in a child process
// (standin.StartRemote) and returns the gateway's target for them.
func startRemoteTarget(tb testing.TB, n int) string {
	tb.Helper()
	return standin.StartRemote(tb, n)
}
