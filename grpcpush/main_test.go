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
