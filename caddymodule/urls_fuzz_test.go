package caddymodule

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
)

// FuzzParseBackendURL feeds arbitrary url fields to the backend URL parser.
// An accepted URL must be usable as it is: HTTP dials are host:port with a
// port 1-65535, one per URL; a dns: target parses in grpcpush and survives
// a round trip through its canonical form.
func FuzzParseBackendURL(f *testing.F) {
	for _, s := range []string{
		"http://localhost:8080", "https://a:443 https://b", "h2c://[::1]:9000", "http://a:1 https://b:2",
		"dns:///distributor:9095", "dns://127.0.0.1:53/d.mimir.svc:9095", "dns://[::1]/x:1", "dns:///[::1]:9095",
		"dns:///10.0.0.1:9095", "http://a:0", "http://a:99999", "http://user:pw@a:1", "http://a:1/path",
		"h2C://]0", "http://[::1", "dns://a", "dns:///a", "dns:///a:", "ftp://a:1", "", "  ", "http://%zz",
		"127.0.0.1:8080", "localhost:8080 qf:8080", "mimir", ":8080", "[::1]:1", "a:b:c", "%zz", "a:1 http://b:2",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if len(raw) > 4096 {
			return
		}
		u, err := ParseBackendURL(raw)
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("%q: empty error", raw)
			}
			return
		}
		switch u.Kind {
		case KindHTTP:
			if n := len(strings.Fields(raw)); len(u.Dials) != n {
				t.Fatalf("%q: %d dials for %d URLs", raw, len(u.Dials), n)
			}
			if _, ok := httpSchemes[u.Scheme]; !ok {
				t.Fatalf("%q: scheme %q", raw, u.Scheme)
			}
			for _, d := range u.Dials {
				host, port, err := net.SplitHostPort(d)
				if err != nil || host == "" {
					t.Fatalf("%q: dial %q is not host:port: %v", raw, d, err)
				}
				if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
					t.Fatalf("%q: dial %q has port %q", raw, d, port)
				}
			}
		case KindGRPC:
			tg, err := grpcpush.ParseTarget(u.Targets[0])
			if err != nil {
				t.Fatalf("%q accepted, but grpcpush refuses %q: %v", raw, u.Targets[0], err)
			}
			again, err := grpcpush.ParseTarget(tg.String())
			if err != nil || again != tg {
				t.Fatalf("%q: canonical form %q parses to %+v, %v; want %+v", raw, tg.String(), again, err, tg)
			}
			if n, err := strconv.Atoi(tg.Port); err != nil || n < 1 || n > 65535 {
				t.Fatalf("%q: port %q", raw, tg.Port)
			}
		default:
			t.Fatalf("%q: kind %q", raw, u.Kind)
		}
	})
}
