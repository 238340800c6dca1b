package mirror

import (
	"testing"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// Every test leaves no goroutine behind: copies in flight end with Close,
// and the clusters and Handlers of the tests are stopped.
func TestMain(m *testing.M) { standin.TestMain(m) }
