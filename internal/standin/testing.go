package standin

import (
	"bytes"
	"context"
	"flag"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The helpers below are shared by the tests of every package: conditions
// polled with a deadline, the distributor misbehaviours tests ask for, the
// headers of a push, and a goroutine baseline.

// WaitFor polls cond until it holds, failing the test if it does not within
// timeout; generous timeouts keep tests steady on a busy machine.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Answer503 answers every call 503, as a distributor whose ingesters are
// down.
func Answer503(w http.ResponseWriter, _ *http.Request) bool {
	http.Error(w, "ingesters down", http.StatusServiceUnavailable)
	return true
}

// AnswerAfter answers normally after d, as a slow distributor. A call
// canceled before (its client went away) or one whose server is stopped
// (Stop) is abandoned at once, so no handler outlives its test. One past
// its deadline waits on: answering then would race the client's own
// deadline, which must decide what the client sees.
func AnswerAfter(d time.Duration) Behavior {
	return func(_ http.ResponseWriter, r *http.Request) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		ctx := r.Context()
		select {
		case <-t.C:
			return false
		case <-Killed(r):
			return true
		case <-ctx.Done():
			if ctx.Err() == context.Canceled {
				return true
			}
		}
		select {
		case <-t.C:
			return false
		case <-Killed(r):
			return true
		}
	}
}

// HoldUntil counts each call in held, holds it until release is closed, and
// then answers it normally.
func HoldUntil(release <-chan struct{}, held *atomic.Int64) Behavior {
	return func(http.ResponseWriter, *http.Request) bool {
		held.Add(1)
		<-release
		return false
	}
}

// HangUntil counts each call in held (when held is not nil), holds it
// until release is closed, and then answers nothing: a hung distributor
// that does not even answer when the call's own deadline passes (which
// would race the gateway's timeout with a 200). Goroutine counts leave its
// calls out by "standin.HangUntil", the name in their stacks: HangUntil is
// never inlined, as an inlined closure is named after its caller instead.
//
//go:noinline
func HangUntil(release <-chan struct{}, held *atomic.Int64) Behavior {
	return func(http.ResponseWriter, *http.Request) bool {
		if held != nil {
			held.Add(1)
		}
		<-release
		return true
	}
}

// NewPush is a Remote-Write 1.0 push of body to url, with the body's
// Content-Type and Content-Encoding, and tenant as X-Scope-OrgID unless it
// is "". It panics on a URL that does not parse (a test's own constant).
func NewPush(url string, body []byte, tenant string) *http.Request {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		panic("standin.NewPush: " + err.Error())
	}
	req.Header.Set("Content-Type", ContentTypeRW1)
	req.Header.Set("Content-Encoding", "snappy")
	if tenant != "" {
		req.Header.Set("X-Scope-OrgID", tenant)
	}
	return req
}

// SetPushHeaders sets what a Remote-Write 1.0 client sends with a push, as
// tenant.
func SetPushHeaders(h http.Header, tenant string) {
	h.Set("Content-Type", ContentTypeRW1)
	h.Set("Content-Encoding", "snappy")
	h.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	h.Set("X-Scope-OrgID", tenant)
}

// WaitGoroutines waits until the process runs at most baseline+margin
// goroutines, not counting those whose stack mentions one of ignore (e.g.
// a stand-in's calls held on purpose), and fails the test with every stack
// if that does not happen within 30 s: connections and timers wind down on
// their own schedule. A margin rather than an exact set: Caddy in the test
// process keeps process-wide goroutines, and gRPC may redial a connection
// during a test.
func WaitGoroutines(t testing.TB, baseline, margin int, ignore ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, stacks := Goroutines(ignore...)
		if n <= baseline+margin {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d, baseline %d (+%d allowed)\n%s", n, baseline, margin, stacks)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// NumGoroutines is Goroutines' count alone, for a baseline.
func NumGoroutines(ignore ...string) int {
	n, _ := Goroutines(ignore...)
	return n
}

// Goroutines counts the running goroutines whose stack mentions none of
// ignore, and returns every stack.
func Goroutines(ignore ...string) (int, string) {
	buf := make([]byte, 8<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	n := 0
	for _, g := range strings.Split(stacks, "\n\n") {
		counted := true
		for _, s := range ignore {
			if strings.Contains(g, s) {
				counted = false
				break
			}
		}
		if counted {
			n++
		}
	}
	return n, stacks
}

// ReplaceFile replaces path's content at once: a new file renamed over it,
// as configuration tools and Kubernetes do, so that a reader never sees
// half of it.
func ReplaceFile(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// ParallelCPU runs body in 8 goroutines per core (b.RunParallel) and
// reports the process's CPU per iteration as cpu-ns/op: the gateway's CPU
// alone when its peers run in another process.
func ParallelCPU(b *testing.B, body func(pb *testing.PB)) {
	b.SetParallelism(8)
	start, ok := ProcessCPU()
	b.ResetTimer()
	b.RunParallel(body)
	b.StopTimer()
	if end, _ := ProcessCPU(); ok {
		b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
	}
}

// PushCPU measures push, one push of a body of bodyLen bytes, with
// ParallelCPU, after warmUp pushes one at a time (connections, pools and
// the heap's size settle first). A push's error fails the benchmark.
func PushCPU(b *testing.B, bodyLen, warmUp int, push func() error) {
	for range warmUp {
		if err := push(); err != nil {
			b.Fatalf("warm-up: %v", err)
		}
	}
	b.SetBytes(int64(bodyLen))
	b.ReportAllocs()
	ParallelCPU(b, func(pb *testing.PB) {
		for pb.Next() {
			if err := push(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// SetDefaultParallel makes n the -parallel of a test binary unless its
// command line gives one: for packages whose parallel tests mostly wait
// (on timers, child processes, their turn at a shared resource) rather
// than compute. Call it in TestMain, before m.Run.
func SetDefaultParallel(n int) {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given {
		_ = flag.Set("test.parallel", strconv.Itoa(n))
	}
}
