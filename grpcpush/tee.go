package grpcpush

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"sync"

	"github.com/grafana/dskit/httpgrpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
)

// Tee receives every request a Priority tunnels that its endpoint accepted
// (answered 2xx), right after the answer and before it is written, so that
// copies can go elsewhere (mirrors of the writes to a second cluster) with
// the same bytes. Copy must not block the request: a Tee that uses the
// request after Copy returns takes it with Request.Keep and sends it from
// another goroutine.
type Tee interface {
	Copy(q *Request)
}

// Request is a request as it is tunnelled: method, request URI, headers
// (hop-by-hop headers removed, X-Forwarded-* as the caller set them), the
// tenant, and the body. The body is the request's own buffer, not a copy:
// a kept Request holds a reference to it, so it stays in memory (and in the
// backend's Budget) until every holder has released it.
type Request struct {
	Method, URL, Tenant string
	// Headers are the tunnelled headers; a kept Request has its own slice
	// of them (the lists are the request's, which nothing modifies).
	Headers []httpgrpc.Header

	buf     *[]byte    // headroom + body
	root    mem.Buffer // owns buf
	bodyLen int
	kept    bool
	budget  *Budget // that holds the body
}

// Body returns the body bytes; they must not be modified.
func (q *Request) Body() []byte { return (*q.buf)[headroom : headroom+q.bodyLen] }

// BufferedShare is the share of its Budget's bound that the budget holding
// the body holds now (0 to 1): a copy that would keep bodies in it should
// not take what the requests themselves need.
func (q *Request) BufferedShare() float64 {
	if q.budget == nil {
		return 0
	}
	return float64(q.budget.Used()) / float64(q.budget.Limit())
}

// credentials are the headers a kept Request (a copy for another cluster)
// does not carry: the client's credentials are for the gateway and the
// cluster it fronts, nobody else.
var clientCredentials = map[string]bool{"Authorization": true, "Proxy-Authorization": true, "Cookie": true}

// Keep returns a Request that stays valid until its Release, sharing the
// body (one more reference to its buffer, no copy), without the client's
// credentials (Authorization, Cookie).
func (q *Request) Keep() *Request {
	k := &Request{Method: q.Method, URL: q.URL, Tenant: q.Tenant, buf: q.buf, root: q.root, bodyLen: q.bodyLen, kept: true, budget: q.budget}
	k.Headers = make([]httpgrpc.Header, 0, len(q.Headers))
	for _, hd := range q.Headers {
		if clientCredentials[hd.Key] {
			continue
		}
		if hd.Key == "Host" && !q.kept { // its list lives in the pooled call, reused
			hd.Values = slices.Clone(hd.Values)
		}
		k.Headers = append(k.Headers, hd) // the request's own lists, never modified
	}
	q.root.Ref()
	return k
}

// BodyReader returns a reader of the body that holds its own reference to
// the buffer until Close, for an HTTP request that sends the body: a
// transport may read the body after RoundTrip returned, and closes it when
// done. Close is idempotent; a Read after Close fails rather than reading a
// buffer given back.
func (q *Request) BodyReader() io.ReadCloser {
	q.root.Ref()
	return &bodyReader{r: bytes.NewReader(q.Body()), root: q.root}
}

type bodyReader struct {
	mu   sync.Mutex
	r    *bytes.Reader
	root mem.Buffer // nil once closed
}

func (b *bodyReader) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.root == nil {
		return 0, errBodyReaderClosed
	}
	return b.r.Read(p)
}

func (b *bodyReader) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.root != nil {
		b.root.Free()
		b.root = nil
	}
	return nil
}

var errBodyReaderClosed = errors.New("request body closed")

// Release drops a kept Request's reference to the body; the buffer goes
// back to the pool when the last holder lets go. Only for Keep's Requests.
func (q *Request) Release() {
	if q.kept && q.root != nil {
		q.root.Free()
		q.root, q.buf = nil, nil
	}
}

// view fills c's Request view for a Tee, valid while the call's request is.
func (c *call) view(tenant string) *Request {
	c.tee = Request{Method: c.req.msg.Method, URL: c.req.msg.Url, Tenant: tenant, Headers: c.headers,
		buf: c.req.buf, root: c.req.root, bodyLen: c.req.bodyLen, budget: c.site.budget}
	return &c.tee
}

// ReadRequest reads r's body (up to limit bytes) into a buffer of budget and
// returns it as a kept Request with r's method, URI, headers (those in
// replace instead of the client's, as Options.ReplaceHeaders) and tenant,
// for a caller that sends r elsewhere itself (over HTTP) and tees it: the
// caller gives its own request a BodyReader and Releases the Request. The
// errors are ErrBodyTooLarge, ErrBudgetFull, or the body's own.
func ReadRequest(r *http.Request, limit int64, budget *Budget, replace []httpgrpc.Header) (*Request, error) {
	buf, n, err := readBody(r.Body, r.ContentLength, limit, budget)
	if err != nil {
		return nil, err
	}
	c := getCall()
	defer putCall(c)
	c.site = &site{budget: budget}
	c.setBody(buf, n) // the Request takes over this reference
	c.setRequest(r, replace)
	var tenant string
	if v := r.Header[tenantHeader]; len(v) > 0 {
		tenant = v[0]
	}
	q := c.view(tenant)
	k := *q
	// The call's lists go back to the pool: the header list and the Host
	// values are copied; the other values are r's or replace's, never
	// modified. Keep (the copies') leaves the credentials out.
	k.Headers = slices.Clone(q.Headers)
	for i := range k.Headers {
		if k.Headers[i].Key == "Host" {
			k.Headers[i].Values = slices.Clone(k.Headers[i].Values)
		}
	}
	k.kept = true
	return &k, nil
}

// Send tunnels a kept Request to one of h's endpoints like a request of its
// own (balancing, retries, passive health, metrics), and returns the status
// the endpoint answered (also a 4xx or 5xx it answered), or the call's gRPC
// error. The answer's body is dropped. ctx bounds the call; the Request
// stays the caller's.
func (h *Handler) Send(ctx context.Context, q *Request) (int, error) {
	h.active.enter()
	defer h.active.leave()
	c := getCall()
	c.group, c.site = h, &h.own
	c.req.msg.Method, c.req.msg.Url = q.Method, q.URL
	for i := range q.Headers {
		c.hptrs = append(c.hptrs, &q.Headers[i])
	}
	c.req.msg.Headers = c.hptrs
	c.req.buf, c.req.root, c.req.bodyLen = q.buf, q.root, q.bodyLen
	c.req.shared = true // the request's own call writes the headroom

	ctx = context.WithValue(ctx, callKey{}, c)
	ctx = metadata.NewOutgoingContext(ctx, c.outgoingMD(q.Tenant))
	code, counted, err := 0, 0, h.conn.Invoke(ctx, handleMethod, &c.req, &c.resp)
	if err == nil {
		code = int(c.resp.Code)
		counted = code
		if hm := h.tracker.health; hm != nil {
			hm.answered(c.endpoint.Load(), code)
		}
	} else if o := mapError(err); o.resp != nil {
		code, counted, err = int(o.resp.Code), int(o.resp.Code), nil
	} else {
		counted = o.code
	}
	ep := c.endpoint.Load()
	if m := h.metrics; m != nil {
		if ep == nil {
			m.inc(&h.tracker.none.counters, noEndpoint, counted)
		} else {
			m.inc(&ep.counters, ep.addr, counted)
		}
	}
	if ep != nil {
		h.tracker.release(ep)
	}
	putCall(c)
	return code, err
}

// Send sends a kept Request like Handler.Send, to the group a request would
// go to now (without spilling to the later ones).
func (p *Priority) Send(ctx context.Context, q *Request) (int, error) {
	return p.groups[p.Current()].Send(ctx, q)
}
