package mirror

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// Every test leaves no goroutine behind: copies in flight end with Close,
// and the clusters and Handlers of the tests are stopped. A test binary
// started by standin.StartRemote serves stand-ins instead.
func TestMain(m *testing.M) {
	if code, ok := standin.RemoteMain(); ok {
		os.Exit(code)
	}
	goleak.VerifyTestMain(m)
}
