package grpcpush

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// Mimir's distributor defaults for the Retry-After of its 429 and 5xx
// answers (-distributor.retry-after-header.min-backoff, max-backoff).
const (
	DefaultRetryAfterMin = 6 * time.Second
	DefaultRetryAfterMax = 96 * time.Second
)

// RetryAfter is how the gateway's own 429 and 503 answers tell a client when
// to come back, computed as Mimir's distributor computes it
// (pkg/distributor/push.go, calculateRetryAfter): the request's
// Retry-Attempt header n (Prometheus sends it on retries; missing or
// invalid is 1) gives Min·2^(n-1), at most Max, plus a uniform jitter of
// ±50 %, kept within [Min, Max], in whole seconds. Clients that honour
// Retry-After (Prometheus does, in place of its own backoff) so back off
// exponentially and spread out, instead of all coming back in lock-step
// when the cluster recovers. The zero value uses Mimir's defaults.
type RetryAfter struct {
	Min, Max time.Duration
	// Off sends no Retry-After: clients use their own backoff.
	Off bool
}

// Check rejects bounds that cannot work.
func (ra RetryAfter) Check() error {
	if ra.Off {
		if ra.Min != 0 || ra.Max != 0 {
			return errors.New("retry_after: off sends no Retry-After: min and max are not used with it")
		}
		return nil
	}
	lo, hi := ra.bounds()
	switch {
	case lo < time.Second:
		return fmt.Errorf("retry_after min %v: must be at least 1s (Retry-After counts whole seconds)", lo)
	case hi < lo:
		return fmt.Errorf("retry_after max %v: must be at least min (%v)", hi, lo)
	case lo%time.Second != 0 || hi%time.Second != 0:
		return errors.New("retry_after: min and max must be whole seconds (Retry-After counts whole seconds)")
	}
	return nil
}

func (ra RetryAfter) bounds() (lo, hi time.Duration) {
	return cmp.Or(ra.Min, DefaultRetryAfterMin), cmp.Or(ra.Max, DefaultRetryAfterMax)
}

// Value returns the Retry-After for an answer to r, "" when Off.
func (ra RetryAfter) Value(r *http.Request) string {
	if ra.Off {
		return ""
	}
	lo, hi := ra.bounds()
	attempt, err := strconv.Atoi(r.Header.Get("Retry-Attempt"))
	if err != nil || attempt < 1 {
		attempt = 1
	}
	delay := min(hi.Seconds(), lo.Seconds()*math.Pow(2, float64(attempt-1)))
	if jitter := int64(delay * 0.5); jitter > 0 {
		delay += float64(rand.Int64N(2*jitter+1) - jitter) // #nosec G404 -- jitter needs no CSPRNG
	}
	delay = max(lo.Seconds(), min(hi.Seconds(), delay))
	return strconv.FormatInt(int64(delay), 10)
}
