package testcaddy

import (
	"strings"
	"sync"
	"testing"
)

// turn is held by the test whose Caddy runs in the test process.
var (
	turn   = make(chan struct{}, 1)
	turnMu sync.Mutex
	holder testing.TB // the test holding turn
)

// takeTurn waits until no other test runs a Caddy in this process and
// gives the turn back when the test ends (after Caddy has stopped: the
// cleanup registered first runs last). A test starting a second Caddy
// (which replaces its first), or a subtest of it, has the turn already.
func takeTurn(t testing.TB) {
	turnMu.Lock()
	mine := holder != nil && (holder == t || strings.HasPrefix(t.Name(), holder.Name()+"/"))
	turnMu.Unlock()
	if mine {
		return
	}
	turn <- struct{}{}
	turnMu.Lock()
	holder = t
	turnMu.Unlock()
	t.Cleanup(func() {
		turnMu.Lock()
		holder = nil
		turnMu.Unlock()
		<-turn
	})
}
