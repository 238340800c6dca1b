package mirror

import (
	"context"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	zapobserver "go.uber.org/zap/zaptest/observer"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// TestMirrorLogsThroughTheNewestUser: a mirror kept by a reloaded
// configuration logs its failures through that configuration's logger
// (UseLogger), and through its own again once released.
func TestMirrorLogsThroughTheNewestUser(t *testing.T) {
	base, baseLogs := zapobserver.New(zapcore.DebugLevel)
	m, err := New(senderFunc(func(context.Context, *grpcpush.Request) (int, error) {
		return http.StatusInternalServerError, nil
	}), Options{Name: "logs", Percent: DefaultPercent, Logger: zap.New(base)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	fail := func() { offer(t, m) }

	newer, newerLogs := zapobserver.New(zapcore.DebugLevel)
	release := m.UseLogger(zap.New(newer))
	fail()
	standin.WaitFor(t, 10*time.Second, "the failure in the newer logger", func() bool { return newerLogs.Len() == 1 })
	release()
	fail()
	standin.WaitFor(t, 10*time.Second, "the failure in the mirror's own logger", func() bool { return baseLogs.Len() == 1 })
	if n := newerLogs.Len(); n != 1 {
		t.Errorf("the released logger got %d lines, want 1", n)
	}
	for _, e := range append(newerLogs.All(), baseLogs.All()...) {
		if e.ContextMap()["mirror"] != "logs" {
			t.Errorf("line %q without the mirror's name: %v", e.Message, e.ContextMap())
		}
	}
}
