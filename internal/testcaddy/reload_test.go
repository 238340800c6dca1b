package testcaddy

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestReloadRetry: within a moment of a reload, a request whose connection
// closes unanswered is sent again; later, or for an answer, it is not.
func TestReloadRetry(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1)%2 == 1 { // every other connection closes unanswered
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
			return
		}
		w.WriteHeader(http.StatusTeapot)
	}))
	defer srv.Close()
	var loaded reloadTime
	client := &http.Client{Transport: &reloadRetry{RoundTripper: &http.Transport{DisableKeepAlives: true}, loaded: &loaded}}
	post := func() (*http.Response, error) {
		return client.Post(srv.URL, "text/plain", bytes.NewReader([]byte("push")))
	}

	loaded.now()
	if resp, err := post(); err != nil || resp.StatusCode != http.StatusTeapot || calls.Load() != 2 {
		t.Fatalf("just after a reload: %v %v after %d requests, want the answer of the second", resp, err, calls.Load())
	}
	loaded.Store(time.Now().Add(-time.Minute).UnixNano())
	if _, err := post(); err == nil || calls.Load() != 3 {
		t.Fatalf("long after a reload: %v after %d requests, want the closed connection's error", err, calls.Load())
	}
}
