package grpcpush

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// LoggerRef is a logger that can change while it is in use: a thing shared
// by several configurations (a pooled Handler, a mirror) logs through the
// newest one that uses it (Use), else through its base logger. Every line
// carries the fields given to NewLoggerRef (such as the backend's name).
type LoggerRef struct {
	p      atomic.Pointer[zap.Logger]
	fields []zap.Field

	mu    sync.Mutex
	base  *zap.Logger
	users []*zap.Logger // Use's, oldest first
}

// NewLoggerRef returns a LoggerRef logging through base (nil: nowhere)
// until Use is called.
func NewLoggerRef(base *zap.Logger, fields ...zap.Field) *LoggerRef {
	if base == nil {
		base = zap.NewNop()
	}
	l := &LoggerRef{fields: fields, base: base}
	l.refresh()
	return l
}

// Get returns the logger in use.
func (l *LoggerRef) Get() *zap.Logger { return l.p.Load() }

// Use makes z the logger until release is called.
func (l *LoggerRef) Use(z *zap.Logger) (release func()) {
	if z == nil {
		z = zap.NewNop()
	}
	entry := z // one registration: the pointer, not the logger, is removed
	l.mu.Lock()
	l.users = append(l.users, entry)
	l.refresh()
	l.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			for i := len(l.users) - 1; i >= 0; i-- {
				if l.users[i] == entry {
					l.users = append(l.users[:i], l.users[i+1:]...)
					break
				}
			}
			l.refresh()
		})
	}
}

// refresh stores the newest logger, with the fields (l.mu held, or l not
// shared yet).
func (l *LoggerRef) refresh() {
	z := l.base
	if n := len(l.users); n > 0 {
		z = l.users[n-1]
	}
	l.p.Store(z.With(l.fields...))
}

// Failed requests are logged like reverse_proxy's upstream errors: at error
// level when the gateway or the cluster failed (5xx), at warn when the
// client did (4xx), at debug when the client went away. At most
// failureLogBurst lines a failureLogWindow per Handler are written, so that
// an outage cannot flood the log; the next line written says how many were
// left out.
const (
	failureLogBurst  = 10
	failureLogWindow = 10 * time.Second
)

// failureLimit counts the failure lines of the current window.
type failureLimit struct {
	mu       sync.Mutex
	window   time.Time // start of the current window
	written  int
	suppress int // left out since the last line written
}

// allow reports whether a line may be written now, and how many were left
// out before it.
func (f *failureLimit) allow(now time.Time) (bool, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if now.Sub(f.window) >= failureLogWindow {
		f.window, f.written = now, 0
	}
	if f.written >= failureLogBurst {
		f.suppress++
		return false, 0
	}
	f.written++
	left := f.suppress
	f.suppress = 0
	return true, left
}

// logFailure logs a gateway-made answer (or a client gone) of request r with
// status code and the one line the client reads, naming the endpoint of c's
// last attempt; through the logger of c's configuration.
func (h *Handler) logFailure(c *call, r *http.Request, code int, line string) {
	level, msg := zapcore.WarnLevel, "request refused"
	switch {
	case code == StatusClientClosedRequest:
		level, msg = zapcore.DebugLevel, "client went away"
	case code >= 500:
		level, msg = zapcore.ErrorLevel, "request failed"
	}
	logger := h.logger.Get()
	if c.site != nil && c.site.logger != nil {
		logger = c.site.logger
	}
	ce := logger.Check(level, msg)
	if ce == nil {
		return
	}
	fields := []zap.Field{zap.Int("status", code), zap.String("endpoint", addrOf(c.endpoint.Load())),
		zap.String("target", c.group.s.target.String()), zap.String("method", r.Method),
		zap.String("uri", r.URL.RequestURI()), zap.String("error", line)} // origin form: an absolute-form target may hold user info
	if level > zapcore.DebugLevel {
		ok, left := h.failures.allow(time.Now())
		if !ok {
			return
		}
		if left > 0 {
			fields = append(fields, zap.Int("left_out", left))
		}
	}
	ce.Write(fields...)
}
