package grpcpush

import (
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	zapobserver "go.uber.org/zap/zaptest/observer"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// TestWarnsWhileNoEndpointIsReady: a backend whose only endpoint refuses
// connections warns, once it has had no READY endpoint for longer than
// refresh, naming the target, the addresses and the connection error; when
// the endpoint comes up it says so at info.
func TestWarnsWhileNoEndpointIsReady(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close() // nothing listens there now

	const refresh = 200 * time.Millisecond
	core, logs := zapobserver.New(zapcore.InfoLevel)
	start := time.Now()
	h, err := New(Options{Target: "dns:///" + addr, Refresh: refresh, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })

	standin.WaitFor(t, 20*time.Second, "the no-READY warning", func() bool {
		return logs.FilterMessage("backend has no READY endpoint").Len() > 0
	})
	if took := time.Since(start); took < refresh {
		t.Errorf("warned after %v, before refresh (%v) had passed", took, refresh)
	}
	w := logs.FilterMessage("backend has no READY endpoint").All()[0]
	if w.Level != zapcore.WarnLevel {
		t.Errorf("logged at %v, want warn", w.Level)
	}
	f := w.ContextMap()
	if f["target"] != "dns:///"+addr {
		t.Errorf("target = %v", f["target"])
	}
	if eps, _ := f["endpoints"].([]any); len(eps) != 1 || !strings.HasPrefix(eps[0].(string), addr+" ") {
		t.Errorf("endpoints = %v, want [%s <state>]", f["endpoints"], addr)
	}
	if e, _ := f["last_connection_error"].(string); !strings.Contains(e, "connection refused") {
		t.Errorf("last_connection_error = %q, want the refused connection", f["last_connection_error"])
	}

	// The endpoint comes up: an info line, and no more warnings.
	srv, err := standin.StartGRPC(addr, standin.NewDistributor("late"))
	if err != nil {
		t.Skipf("could not listen on %s again: %v", addr, err)
	}
	t.Cleanup(srv.Stop)
	standin.WaitFor(t, 30*time.Second, "the READY-again info line", func() bool {
		return logs.FilterMessage("backend has a READY endpoint again").Len() > 0
	})
	warnings := logs.FilterMessage("backend has no READY endpoint").Len()
	time.Sleep(3 * refresh) // no condition to poll: the absence of warnings
	if n := logs.FilterMessage("backend has no READY endpoint").Len(); n != warnings {
		t.Errorf("%d more warnings while an endpoint was READY", n-warnings)
	}
}
