package caddymodule_test

import (
	"testing"

	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// The test binary is also Caddy, for tests that run it in a process of
// their own (testcaddy.StartProcess).
func TestMain(m *testing.M) { testcaddy.TestMain(m) }
