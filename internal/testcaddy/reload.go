package testcaddy

import (
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"
)

// reloadTime is when the last reload through the admin API ended (Unix ns).
type reloadTime struct{ atomic.Int64 }

func (t *reloadTime) now() { t.Store(time.Now().UnixNano()) }

// reloadRetry sends a request again when its connection closed before an
// answer (EOF, reset) within a moment of a reload: Go's HTTP/1 server
// closes, unread and unanswered, a request that arrives on a connection
// in the instant the old server stops. A remote-write client retries
// those; any other error, and any at other times, is the test's to see.
// A client cannot tell that race from a server that closes a connection
// after reading the request: such a fault right after a reload shows as a
// request handled twice (a count off by one), not as an error.
type reloadRetry struct {
	http.RoundTripper
	loaded *reloadTime
}

func (rt *reloadRetry) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := rt.RoundTripper.RoundTrip(r)
	for try := 0; closedUnanswered(err) && try < 5 && rt.justReloaded() && r.Context().Err() == nil; try++ {
		if r.Body != nil && r.Body != http.NoBody {
			if r.GetBody == nil {
				break
			}
			body, berr := r.GetBody()
			if berr != nil {
				break
			}
			r = r.Clone(r.Context())
			r.Body = body
		}
		resp, err = rt.RoundTripper.RoundTrip(r)
	}
	return resp, err
}

// CloseIdleConnections closes the transport's idle connections (what
// http.Client.CloseIdleConnections asks of a transport).
func (rt *reloadRetry) CloseIdleConnections() {
	if t, ok := rt.RoundTripper.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

func (rt *reloadRetry) justReloaded() bool {
	return time.Since(time.Unix(0, rt.loaded.Load())) < 2*time.Second
}

// closedUnanswered reports whether err is a connection closed before an
// answer came.
func closedUnanswered(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}
