package grpcpush

import (
	"testing"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// Every test leaves no goroutine behind: Handlers, clusters and servers
// are stopped, and calls in flight end with them.
func TestMain(m *testing.M) { standin.TestMain(m) }
