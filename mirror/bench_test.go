//go:build unix

package mirror

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// BenchmarkMirrorCPU is the gateway's CPU per push (cpu-ns/op) through a
// Priority to 3 stand-ins, without a mirror and with a healthy one of 2
// more, the stand-ins in child processes, 8 pushes in flight per core. Run
// one variant per process, alternating (the first sub-benchmark of a
// process measures more):
//
//	for i in 1 2 3 4 5; do for v in none healthy; do
//	  go test -run '^$' -bench "MirrorCPU/mirror=$v\$" -benchtime 20000x ./mirror/
//	done; done
func BenchmarkMirrorCPU(b *testing.B) {
	body := standin.RemoteWriteBody(2000, 1)
	primary, second := standin.StartRemote(b, 3), standin.StartRemote(b, 2)
	for _, v := range []string{"none", "healthy"} {
		// Each run's Handlers and Mirror close when the run ends: none of
		// them works during a later run's measured loop.
		b.Run("mirror="+v, func(b *testing.B) {
			var opts grpcpush.PriorityOptions
			if v == "healthy" {
				m, err := New(newHandler(b, second), Options{Name: "bench", Percent: DefaultPercent})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(m.Close)
				opts.Tee = Set{m}
			}
			p, err := grpcpush.NewPriority([]*grpcpush.Handler{newHandler(b, primary)}, opts)
			if err != nil {
				b.Fatal(err)
			}
			standin.PushCPU(b, len(body), 500, func() error {
				r := httptest.NewRequest(http.MethodPost, standin.PushPath, bytes.NewReader(body))
				standin.SetPushHeaders(r.Header, "bench")
				w := httptest.NewRecorder()
				p.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					return fmt.Errorf("status %d", w.Code)
				}
				return nil
			})
		})
	}
}
