package grpcpush

import (
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// TestRetryAfterFollowsMimir: for Retry-Attempt 1 to 7 the values stay in
// Mimir's bounds (min·2^(n-1) capped at max, ±50 %, within [min, max]) and
// spread out; a missing or invalid attempt counts as 1; off sends none.
func TestRetryAfterFollowsMimir(t *testing.T) {
	bounds := map[string][2]int{
		"": {6, 9}, "x": {6, 9}, "0": {6, 9}, "1": {6, 9}, "2": {6, 18}, "3": {12, 36},
		"4": {24, 72}, "5": {48, 96}, "6": {48, 96}, "7": {48, 96}, "99999": {48, 96},
	}
	var ra RetryAfter
	for attempt, b := range bounds {
		r := httptest.NewRequest("POST", "/api/v1/push", nil)
		if attempt != "" {
			r.Header.Set("Retry-Attempt", attempt)
		}
		seen := map[int]bool{}
		for i := 0; i < 200; i++ {
			n, err := strconv.Atoi(ra.Value(r))
			if err != nil || n < b[0] || n > b[1] {
				t.Fatalf("Retry-Attempt %q: Retry-After %q, want %d to %d", attempt, ra.Value(r), b[0], b[1])
			}
			seen[n] = true
		}
		if len(seen) < 2 {
			t.Errorf("Retry-Attempt %q: always %v, want jitter", attempt, seen)
		}
	}
	r := httptest.NewRequest("POST", "/api/v1/push", nil)
	if v := (RetryAfter{Off: true}).Value(r); v != "" {
		t.Errorf("off: %q", v)
	}
	if v := (RetryAfter{Min: time.Second, Max: time.Second}).Value(r); v != "1" {
		t.Errorf("1s to 1s: %q", v)
	}
	for _, bad := range []RetryAfter{{Min: 500 * time.Millisecond}, {Min: 10 * time.Second, Max: 5 * time.Second}, {Min: 1500 * time.Millisecond, Max: 3 * time.Second}} {
		if bad.Check() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
