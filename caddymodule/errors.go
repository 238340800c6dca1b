package caddymodule

import (
	"errors"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// hasErrorRoutes reports whether the request's server has handle_errors
// routes: then an error is returned to Caddy, which runs them; otherwise
// the gateway writes its own one-line answer, since Caddy would write the
// status with an empty body.
func hasErrorRoutes(r *http.Request) bool {
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return srv != nil && srv.Errors != nil && len(srv.Errors.Routes) > 0
}

// writeErrorLine writes a gateway-made error: text/plain, one line; 429 and
// 503 carry Retry-After, so remote-write clients back off briefly.
func writeErrorLine(w http.ResponseWriter, code int, line string) {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("X-Content-Type-Options", "nosniff")
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		hdr.Set("Retry-After", "1")
	}
	w.WriteHeader(code)
	_, _ = w.Write([]byte(strings.ReplaceAll(line, "\n", " ") + "\n"))
}

// handlerError returns err's status and cause when it is a Caddy handler
// error (what reverse_proxy returns), else 502 and err.
func handlerError(err error) (int, error) {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode != 0 {
		if he.Err != nil {
			return he.StatusCode, he.Err
		}
		return he.StatusCode, he
	}
	return http.StatusBadGateway, err
}
