package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
	"github.com/metrics-gateway/metrics_gateway/mirror"
)

// httpBackend is a backend served by Caddy's own reverse_proxy handler.
type httpBackend struct {
	name   Component
	target string
	rp     *reverseproxy.Handler
	logger *zap.Logger
	answer func(http.ResponseWriter, *http.Request, int, string) error
	// tee gets the writes the mirrors copy, read whole into a buffer of
	// budget first (nil without mirrors).
	tee    mirror.Set
	budget *grpcpush.Budget

	// inflight and retired let a handler retired by a config reload close
	// its idle upstream connections once its last request is done.
	// reverse_proxy's own cleanup closes only the connections idle at that
	// moment; those still busy would otherwise linger until their idle
	// timeout (2 minutes by default) after every reload.
	inflight atomic.Int64
	retired  atomic.Bool
}

// newHTTPBackend loads a reverse_proxy handler for b the way Caddy loads any
// module, through ctx: Caddy provisions and validates it now and cleans it up
// with this config, so nothing outlives a reload.
func newHTTPBackend(ctx caddy.Context, name Component, b *Backend, u *ParsedURL, g *Gateway) (*httpBackend, error) {
	raw, err := reverseProxyConfig(b.ReverseProxy, u)
	if err != nil {
		return nil, err
	}
	mod, err := ctx.LoadModuleByID("http.handlers.reverse_proxy", raw)
	if err != nil {
		return nil, fmt.Errorf("reverse_proxy: %v", err)
	}
	h := &httpBackend{name: name, target: b.URL, rp: mod.(*reverseproxy.Handler), logger: g.logger, answer: g.answerError}
	if len(g.tee) > 0 {
		// The mirrored writes are read whole once, into buffers of a Budget
		// pooled like a gRPC backend's.
		if err := registerCollectors(ctx, grpcMetrics.Collectors()...); err != nil {
			return nil, err
		}
		if h.budget, err = g.pooledBudget(name, b.URL, new(GRPCConfig)); err != nil {
			return nil, err
		}
		h.tee = g.tee
	}
	return h, nil
}

// reverseProxyConfig merges the backend's URL into its reverse_proxy config:
// the URLs become the upstreams unless the config names its own (static or
// dynamic), and https:// or h2c:// select the transport's TLS or HTTP/2.
func reverseProxyConfig(raw json.RawMessage, u *ParsedURL) (json.RawMessage, error) {
	var rp reverseproxy.Handler
	if len(raw) > 0 {
		if err := caddy.StrictUnmarshalJSON(raw, &rp); err != nil {
			return nil, fmt.Errorf("reverse_proxy: %v", err)
		}
	}
	if len(rp.Upstreams) > 0 || len(rp.DynamicUpstreamsRaw) > 0 {
		// One source of truth for where a component lives: the url, which
		// the admin view reports and the errors name.
		return nil, fmt.Errorf("reverse_proxy: upstreams come from url; remove `to`/`dynamic` (upstreams, dynamic_upstreams)")
	}
	for _, dial := range u.Dials {
		rp.Upstreams = append(rp.Upstreams, &reverseproxy.Upstream{Dial: dial})
	}
	transport, err := transportFor(rp.TransportRaw, u.Scheme)
	if err != nil {
		return nil, err
	}
	rp.TransportRaw = transport
	return json.Marshal(&rp)
}

// transportFor adds what the URL scheme implies to the transport config:
// TLS for https, HTTP/2 over cleartext for h2c. A config that already says
// either is left alone.
func transportFor(raw json.RawMessage, scheme string) (json.RawMessage, error) {
	transport := map[string]any{"protocol": "http"}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &transport); err != nil {
			return nil, fmt.Errorf("reverse_proxy.transport: %v", err)
		}
	}
	if scheme == "http" {
		if _, tls := transport["tls"]; tls {
			return nil, fmt.Errorf("reverse_proxy.transport: tls is set but the URL is http://; write https://")
		}
		return raw, nil
	}
	if transport["protocol"] != "http" {
		return nil, fmt.Errorf("reverse_proxy.transport: %s:// URLs need the http transport, not %v", scheme, transport["protocol"])
	}
	switch scheme {
	case "https":
		if _, ok := transport["tls"]; !ok {
			transport["tls"] = map[string]any{}
		}
	case "h2c":
		if _, ok := transport["versions"]; !ok {
			transport["versions"] = []string{"h2c", "2"}
		}
	}
	return json.Marshal(transport)
}

func (h *httpBackend) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, mirrored bool) error {
	h.inflight.Add(1)
	defer h.done()
	started := w // the request metrics' recorder, which says whether the answer began
	body, lost := watchBody(r, &w)
	if mirrored && h.tee != nil {
		release, err := h.holdForMirrors(r, &w)
		if err != nil {
			return h.answer(w, r, bodyStatus(err), string(h.name)+": reading request body: "+err.Error())
		}
		defer release()
	}
	err := h.rp.ServeHTTP(w, r, next)
	if cause := body.failed(); cause != nil && (lost.held || err != nil && !responseStarted(started)) {
		// The request's body did not arrive (read_body passed, or it ended
		// early). reverse_proxy answers that 499 (net/http canceled the
		// context of the connection that failed the read), or 502/504 from
		// the transport, though the client may still wait, and a 4xx other
		// than 429 makes a remote-write client drop the batch. As on the
		// gRPC path: 408 for the timeout, 400 for a body cut short.
		return h.answer(w, r, bodyStatus(cause), string(h.name)+": reading request body: "+cause.Error())
	}
	if err == nil || hasErrorRoutes(r) || responseStarted(started) || r.Context().Err() != nil {
		// handle_errors answers it as any reverse_proxy error, or there is
		// nothing left to write (response begun, client gone).
		return err
	}
	// No handle_errors: answer with one line naming the component and what
	// failed (Caddy would send the status with an empty body), and log it
	// as Caddy logs a handler error.
	code, cause := handlerError(err)
	h.logger.Error("backend failed", zap.String("backend", string(h.name)), zap.String("target", h.target),
		zap.Int("status", code), zap.Error(cause), zap.String("uri", r.URL.RequestURI())) // origin form, without user info
	return h.answer(w, r, code, string(h.name)+" "+h.target+": "+cause.Error())
}

// watchBody makes r's body remember why reading it failed and *w hold back
// reverse_proxy's 499 for such a body (serve answers it).
func watchBody(r *http.Request, w *http.ResponseWriter) (*bodyWatch, *lostBody) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, &lostBody{}
	}
	body := &bodyWatch{ReadCloser: r.Body}
	r.Body = body
	lost := &lostBody{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: *w}, body: body}
	*w = lost
	return body, lost
}

// holdForMirrors reads r's body whole for the mirrors, into the backend's
// budget. The primary gets the same bytes, from memory, through a reader
// that holds them until the transport, or release, closes it: a primary
// may answer before it has read them all (full duplex). When the primary's
// answer begins, an accepted write is copied and the body leaves the
// budget as soon as the transport has sent it, before a client that reads
// slowly could keep it there.
func (h *httpBackend) holdForMirrors(r *http.Request, w *http.ResponseWriter) (release func(), err error) {
	q, err := grpcpush.ReadRequest(r, grpcpush.DefaultMaxRequestBody, h.budget, forwardedHeaders(r))
	if err != nil {
		return nil, err
	}
	body := q.BodyReader()
	r.Body, r.ContentLength = body, int64(len(q.Body()))
	var once sync.Once
	answered := func(status int) {
		once.Do(func() {
			if status/100 == 2 { // once the primary accepted it, as on the gRPC path
				h.tee.Copy(q)
			}
			q.Release()
		})
	}
	*w = &answerWatcher{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: *w}, answered: answered}
	return func() {
		answered(0) // no answer (the primary failed): nothing to copy
		_ = body.Close()
	}, nil
}

// bodyWatch remembers why reading a request body failed, unless it was
// closed on this side first (the HTTP/2 transport closes it when the
// backend resets the stream: the backend's failure, not the client's).
type bodyWatch struct {
	io.ReadCloser
	mu     sync.Mutex
	err    error
	closed bool
}

func (b *bodyWatch) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.mu.Lock()
		if b.err == nil && !b.closed {
			b.err = err
		}
		b.mu.Unlock()
	}
	return n, err
}

func (b *bodyWatch) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return b.ReadCloser.Close()
}

// failed is the first error reading the body returned, or nil (also for a
// request without a body).
func (b *bodyWatch) failed() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// lostBody holds back reverse_proxy's 499 when reading the request body
// failed, for serve to answer it.
type lostBody struct {
	*caddyhttp.ResponseWriterWrapper
	body *bodyWatch
	held bool
}

func (l *lostBody) WriteHeader(status int) {
	if status == grpcpush.StatusClientClosedRequest && l.body.failed() != nil {
		l.held = true
		return
	}
	l.ResponseWriterWrapper.WriteHeader(status)
}

// answerWatcher calls answered with the primary's final status as it is
// written.
type answerWatcher struct {
	*caddyhttp.ResponseWriterWrapper
	answered func(status int)
}

func (a *answerWatcher) WriteHeader(status int) {
	if status >= 200 {
		a.answered(status)
	}
	a.ResponseWriterWrapper.WriteHeader(status)
}

func (a *answerWatcher) Write(b []byte) (int, error) {
	a.answered(http.StatusOK) // no WriteHeader: net/http's implicit 200
	return a.ResponseWriterWrapper.Write(b)
}

// bodyStatus is the status of a body that could not be read whole for the
// mirrors, as on the gRPC path: too large (also for request_body's
// max_size) 413, over the buffered bytes 503 (retried), not there within
// the server's read timeout 408, anything else 400.
func bodyStatus(err error) int {
	var maxBytes *http.MaxBytesError
	switch {
	case errors.Is(err, grpcpush.ErrBodyTooLarge) || errors.As(err, &maxBytes):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, grpcpush.ErrBudgetFull):
		return http.StatusServiceUnavailable
	case errors.Is(err, os.ErrDeadlineExceeded):
		return http.StatusRequestTimeout
	}
	return http.StatusBadRequest
}

// responseStarted reports whether a status was already written through w
// (the recorder of the request metrics every request goes through).
func responseStarted(w http.ResponseWriter) bool {
	rec, ok := w.(caddyhttp.ResponseRecorder)
	return !ok || rec.Status() != 0
}

func (h *httpBackend) done() {
	if h.inflight.Add(-1) == 0 && h.retired.Load() {
		h.closeIdleConnections()
	}
}

// retire is called when the config that owns h is unloaded.
func (h *httpBackend) retire() {
	h.retired.Store(true)
	if h.inflight.Load() == 0 {
		h.closeIdleConnections()
	}
}

func (h *httpBackend) closeIdleConnections() {
	if t, ok := h.rp.Transport.(*reverseproxy.HTTPTransport); ok && t.Transport != nil {
		t.Transport.CloseIdleConnections()
	}
}

func (h *httpBackend) status() BackendStatus {
	st := BackendStatus{Component: h.name, Kind: KindHTTP, Target: h.target}
	if h.budget != nil {
		st.BufferedBytes, st.MaxBufferedBytes = h.budget.Used(), h.budget.Limit()
	}
	return st
}
