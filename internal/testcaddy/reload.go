package testcaddy

import (
	"net/http"
	"sync/atomic"
	"time"
)

// reloadTime is when the last reload through the admin API ended (Unix ns).
type reloadTime struct{ atomic.Int64 }

func (t *reloadTime) now() { t.Store(time.Now().UnixNano()) }

// reloadRetry sends a request again when its connection closed before an
// answer within a moment of a reload: Go's HTTP/1 server closes, unread
// and unanswered, a request that arrives on a connection in the instant
// the old server stops. A remote-write client retries those; at other
// times such an error is the test's to see.
type reloadRetry struct {
	http.RoundTripper
	loaded *reloadTime
}

func (rt *reloadRetry) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := rt.RoundTripper.RoundTrip(r)
	for try := 0; err != nil && try < 5 && rt.justReloaded() && r.Context().Err() == nil; try++ {
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
