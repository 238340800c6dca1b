package caddymodule

import (
	"errors"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
)

// answerError answers an error the gateway makes itself (no tenant, a
// backend's failure, ...) the way Caddy answers a handler's error, so that
// `handle_errors` sees gRPC backends' errors as it sees reverse_proxy's:
// with error routes in the server the error is returned as a caddyhttp.Error
// (status and cause; {err.status_code}, {err.message} ...) for them to
// answer. Without error routes, Caddy would write the status with an empty
// body, so grpcpush's one-line text answer is written here instead. 429
// and 503 carry the Retry-After of retry_after either way.
func (g *Gateway) answerError(w http.ResponseWriter, r *http.Request, status int, msg string) error {
	e := &grpcpush.Error{Status: status, Msg: strings.ReplaceAll(msg, "\n", " ")}
	retryAfter := g.retryAfter.Value(r)
	if hasErrorRoutes(r) {
		e.SetRetryAfter(w.Header(), retryAfter)
		return caddyhttp.Error(status, errors.New(e.Msg))
	}
	e.Write(w, retryAfter)
	return nil
}

// hasErrorRoutes reports whether the request's server has error routes
// (`handle_errors`, or "errors" in JSON).
func hasErrorRoutes(r *http.Request) bool {
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return srv != nil && srv.Errors != nil && len(srv.Errors.Routes) > 0
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
