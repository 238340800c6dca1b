package grpcpush

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// countingTee counts the requests it gets and checks their tenant.
type countingTee struct {
	n, wrongTenant atomic.Int64
}

func (c *countingTee) Copy(q *Request) {
	c.n.Add(1)
	if q.Tenant != testTenant {
		c.wrongTenant.Add(1)
	}
}

// TestPriorityTee: a Priority's Tee gets the requests served by Handle
// that the endpoint accepted, and none of HandleWithoutTee's: one Priority
// serves both kinds.
func TestPriorityTee(t *testing.T) {
	cl := startCluster(t, 1)
	tee := &countingTee{}
	p, err := NewPriority([]*Handler{newHandler(t, cl, Options{})}, PriorityOptions{Tee: tee})
	if err != nil {
		t.Fatal(err)
	}
	body := standin.RemoteWriteBody(10, 1)
	serve := func(handle func(http.ResponseWriter, *http.Request) error) {
		t.Helper()
		w := httptest.NewRecorder()
		if err := handle(w, pushRequest(body)); err != nil || w.Code != http.StatusOK {
			t.Fatalf("push: %d %v", w.Code, err)
		}
	}
	serve(p.Handle)
	serve(p.HandleWithoutTee)
	serve(p.HandleWithoutTee)
	serve(p.Handle)
	if n := tee.n.Load(); n != 2 {
		t.Errorf("the Tee got %d requests, want the 2 served by Handle", n)
	}
	if n := tee.wrongTenant.Load(); n != 0 {
		t.Errorf("%d copies with another tenant", n)
	}
	cl.Distributors[0].SetBehavior(standin.Answer503)
	w := httptest.NewRecorder()
	_ = p.Handle(w, pushRequest(body))
	if n := tee.n.Load(); n != 2 {
		t.Errorf("a refused request reached the Tee (%d copies)", n)
	}
}

// TestTeeNotForAnAnswerTheClientGetsAsFailure: a 2xx whose body is over
// max_response_body reaches the client as 502, which it retries: the Tee
// gets no copy of it, or the retry would be mirrored twice.
func TestTeeNotForAnAnswerTheClientGetsAsFailure(t *testing.T) {
	cl := startCluster(t, 1)
	cl.Distributors[0].SetBehavior(func(w http.ResponseWriter, r *http.Request) bool {
		_, _ = w.Write(make([]byte, 2048)) // 200 with a body over the limit below
		return true
	})
	tee := &countingTee{}
	p, err := NewPriority([]*Handler{newHandler(t, cl, Options{MaxResponseBody: 1024})}, PriorityOptions{Tee: tee})
	if err != nil {
		t.Fatal(err)
	}
	var e *Error
	if err := p.Handle(httptest.NewRecorder(), pushRequest(standin.RemoteWriteBody(10, 1))); !errors.As(err, &e) || e.Status != http.StatusBadGateway {
		t.Fatalf("the client's answer: %v, want 502", err)
	}
	if n := tee.n.Load(); n != 0 {
		t.Errorf("the client got 502 (and retries the push) but the Tee got %d copies of it", n)
	}
}
