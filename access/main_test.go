package access

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test leaves no goroutine behind: file watchers, key fetches and test
// servers are all stopped.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
