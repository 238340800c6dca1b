package mirror

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test leaves no goroutine behind: copies in flight end with Close,
// and the clusters and Handlers of the tests are stopped.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
