package grpcpush

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	zapobserver "go.uber.org/zap/zaptest/observer"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// TestFailedRequestsLogged: a gateway-made 5xx is logged at error level with
// its reason, endpoint and target, a client's fault at warn; an outage of
// many requests writes at most failureLogBurst lines a window.
func TestFailedRequestsLogged(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 1)
	core, logs := zapobserver.New(zapcore.DebugLevel)
	h := newHandler(t, c, Options{Logger: zap.New(core), Timeout: 100 * time.Millisecond, Retries: Ptr(0)})
	waitReady(t, h, 1)
	c.Distributors[0].SetBehavior(standin.AnswerAfter(time.Second))
	body := standin.RemoteWriteBody(10, 1)
	for range 3 * failureLogBurst {
		if w := serve(h, pushRequest(body)); w.Code != http.StatusGatewayTimeout {
			t.Fatalf("%d %q, want 504", w.Code, w.Body)
		}
	}
	failed := logs.FilterMessage("request failed").All()
	if len(failed) != failureLogBurst {
		t.Errorf("%d error lines for %d failed requests, want %d", len(failed), 3*failureLogBurst, failureLogBurst)
	}
	f := failed[0]
	fields := f.ContextMap()
	if f.Level != zapcore.ErrorLevel || fields["status"] != int64(504) || fields["endpoint"] != c.Addr(0) ||
		fields["target"] != c.Target() || !strings.Contains(fields["error"].(string), "no answer within 100ms") {
		t.Errorf("error line %v %v", f.Level, fields)
	}

	r := pushRequest(body)
	r.Header.Del("X-Scope-OrgID")
	serve(h, r)
	// The burst is spent: the client's fault is counted, not written.
	if n := logs.FilterMessage("request refused").Len(); n != 0 {
		t.Errorf("%d warn lines past the burst", n)
	}
}

// TestFailureLimitWindow: a window lets failureLogBurst lines through;
// the first line of the next window says how many were left out.
func TestFailureLimitWindow(t *testing.T) {
	var f failureLimit
	now := time.Now()
	for i := range failureLogBurst + 5 {
		ok, left := f.allow(now)
		if ok != (i < failureLogBurst) || left != 0 {
			t.Fatalf("line %d: allow %v, left out %d", i, ok, left)
		}
	}
	if ok, left := f.allow(now.Add(failureLogWindow)); !ok || left != 5 {
		t.Errorf("next window: allow %v, left out %d; want true, 5", ok, left)
	}
}

// TestUseLogger: a shared Handler's own lines go to the newest logger
// still in use; releasing it (a configuration unloaded, or one that failed
// to load) goes back to the one before, then to Options.Logger.
func TestUseLogger(t *testing.T) {
	c := startCluster(t, 1)
	base, baseLogs := zapobserver.New(zapcore.InfoLevel)
	h := newHandler(t, c, Options{Logger: zap.New(base)})
	a, aLogs := zapobserver.New(zapcore.InfoLevel)
	b, bLogs := zapobserver.New(zapcore.InfoLevel)
	releaseA := h.UseLogger(zap.New(a))
	releaseB := h.UseLogger(zap.New(b))
	say := func() { h.logger.Get().Info("line") }
	say()
	releaseB()
	releaseB() // twice is once
	say()
	releaseA()
	say()
	// Only say's lines: the Handler logs its own too (its endpoints, found
	// while this runs).
	baseLines, aLines, bLines := baseLogs.FilterMessage("line"), aLogs.FilterMessage("line"), bLogs.FilterMessage("line")
	if baseLines.Len() != 1 || aLines.Len() != 1 || bLines.Len() != 1 {
		t.Errorf("lines: base %d, a %d, b %d; want 1 each", baseLines.Len(), aLines.Len(), bLines.Len())
	}
	if got := aLines.All()[0].ContextMap()["backend"]; got != DefaultBackendName {
		t.Errorf("backend field %v", got)
	}
}

// TestLoggedURIHasNoUserInfo: a request in absolute form with user info
// (sent by the client, so anyone can) is logged with its origin form: the
// password goes into no log line.
func TestLoggedURIHasNoUserInfo(t *testing.T) {
	cl := startCluster(t, 1)
	core, logs := zapobserver.New(zapcore.DebugLevel)
	h := newHandler(t, cl, Options{Logger: zap.New(core)})
	r := pushRequest([]byte("x"))
	r.Header.Del("X-Scope-OrgID") // refused: 401, logged
	r.RequestURI = "http://team-a:hunter2@gw/api/v1/push"
	if w := serve(h, r); w.Code != http.StatusUnauthorized {
		t.Fatalf("got %d, want 401", w.Code)
	}
	if logs.Len() == 0 {
		t.Fatal("the refused request was not logged")
	}
	for _, e := range logs.All() {
		for k, v := range e.ContextMap() {
			if strings.Contains(fmt.Sprint(v), "hunter2") {
				t.Errorf("log line %q, field %s: %v", e.Message, k, v)
			}
		}
	}
}
