package grpcpush

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grafana/dskit/httpgrpc"
	"github.com/metrics-gateway/metrics_gateway/orgid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/encoding/gzip" // registers the "gzip" compressor
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// writeBufferSize is the HTTP/2 write buffer of each connection.
const writeBufferSize = 256 << 10

// handleMethod is the one RPC every Mimir and Cortex component serves.
const handleMethod = "/httpgrpc.HTTP/Handle"

// tenantHeader is X-Scope-OrgID in canonical form (an http.Header key);
// tenantMetadataKey the gRPC metadata key dskit's server interceptor reads.
var tenantHeader = http.CanonicalHeaderKey(orgid.Header)

const tenantMetadataKey = "x-scope-orgid"

// Handler tunnels HTTP requests to the endpoints of one target over gRPC,
// spreading them with its balancing policy, one call per request. Create it with New; it is
// safe for concurrent use; Close releases its connections.
type Handler struct {
	s        settings
	conn     *grpc.ClientConn
	tracker  *tracker
	metrics  *backendMetrics
	own      site // of requests made through Handle, not through a Priority
	active   *activity
	logger   *LoggerRef
	failures failureLimit // of the failed-request lines
	watch    *readinessWatch

	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool
}

// New validates opts and creates the Handler with its single gRPC ClientConn.
// It does not wait for DNS or connections: it starts them and returns; calls
// made before an endpoint is ready wait for one (up to the timeout) or fail
// with 503 once resolution has failed.
func New(opts Options) (*Handler, error) {
	s, err := opts.settings()
	if err != nil {
		return nil, err
	}
	h := &Handler{s: s, metrics: s.metrics.forBackend(s.backend, s.target.String()), logger: NewLoggerRef(s.logger, zap.String("backend", s.backend))}
	h.tracker = newTracker(h.metrics)
	h.own.budget = NewBudget(s.maxBuffered, s.metrics, s.backend)
	h.active = newActivity()
	if s.health != nil {
		h.tracker.health = newHealthMonitor(s.health, h.tracker, h.logger)
	}
	builder := newDNSBuilder(s.target, s.refresh, h.logger, h.tracker)
	h.conn, err = grpc.NewClient(s.target.String(), h.dialOptions(builder)...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.target, err)
	}
	h.conn.Connect() // resolve and connect now, not on the first request
	h.watch = h.watchReadiness()
	h.metrics.useTarget()
	return h, nil
}

// dialOptions are the ClientConn settings (see the package documentation).
func (h *Handler) dialOptions(b *dnsBuilder) []grpc.DialOption {
	s := h.s
	limit := int(s.maxBody) + MaxMessageOverhead
	callOpts := []grpc.CallOption{
		grpc.ForceCodecV2(tunnelCodec{}),
		grpc.MaxCallSendMsgSize(limit),
		grpc.MaxCallRecvMsgSize(int(s.maxResponse) + MaxMessageOverhead),
		// grpc-go keeps at most this much of a call for retries (default
		// 256 KiB): larger calls would silently lose their retries. The
		// buffered message is the request buffer itself, not a copy.
		grpc.MaxRetryRPCBufferSize(limit),
	}
	if s.compression != "" {
		callOpts = append(callOpts, grpc.UseCompressor(s.compression))
	}
	creds := insecure.NewCredentials()
	if s.tls != nil {
		creds = credentials.NewTLS(s.tls)
	}
	return []grpc.DialOption{
		grpc.WithResolvers(b),
		grpc.WithDefaultServiceConfig(serviceConfig(s.retries, s.lbPolicy)),
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(callOpts...),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                s.keepaliveTime,
			Timeout:             s.keepaliveTimeout,
			PermitWithoutStream: true,
		}),
		// dskit's client defaults: reconnect after 1s, backing off to 5s.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		// Never go idle: an idle channel drops its connections and resolver,
		// and the next push would pay for DNS and handshakes. Unreachable
		// relies on it too: an idle channel stops reporting SubConn states,
		// so the last ones (all failing) would stay.
		grpc.WithIdleTimeout(0),
		grpc.WithUserAgent("metrics_gateway"),
		// A Remote-Write request is typically 20-100 KB: with grpc-go's
		// default 32 KiB write buffer each one costs two write(2) calls.
		// One buffer per connection, so this is cheap.
		grpc.WithWriteBufferSize(writeBufferSize),
	}
}

// serviceConfig selects the balancer and, with retries, grpc-go's retry
// policy: only UNAVAILABLE (the endpoint died or refused the connection) is
// retried, on whichever endpoint round_robin picks next.
func serviceConfig(retries int, policy string) string {
	lb := fmt.Sprintf(`"loadBalancingConfig":[{%q:{}}]`, balancerFor(policy))
	if retries == 0 {
		return "{" + lb + "}"
	}
	return fmt.Sprintf(`{%s,"methodConfig":[{"name":[{"service":"httpgrpc.HTTP"}],"retryPolicy":{`+
		`"maxAttempts":%d,"initialBackoff":"0.025s","maxBackoff":"0.25s","backoffMultiplier":2,`+
		`"retryableStatusCodes":["UNAVAILABLE"]}}]}`, lb, retries+1)
}

// Close closes the ClientConn and stops the resolver. In-flight requests fail.
func (h *Handler) Close() error {
	h.closeOnce.Do(func() {
		h.closed.Store(true)
		h.watch.stop()
		h.closeErr = h.conn.Close()
		h.tracker.closeAll()
		h.metrics.forgetTarget()
	})
	return h.closeErr
}

// UseLogger makes l the logger of the Handler's own lines (endpoint
// changes, passive health, DNS and readiness) until release is called. A
// Handler shared by several configurations logs through the newest one
// still using it, so that a configuration that failed to load, or was
// unloaded, leaves it logging as one that is loaded says; with none, as
// Options.Logger says.
func (h *Handler) UseLogger(l *zap.Logger) (release func()) { return h.logger.Use(l) }

// Endpoints returns the current endpoints, sorted by address.
func (h *Handler) Endpoints() []EndpointStatus { return h.tracker.statuses() }

// Target returns the parsed target.
func (h *Handler) Target() Target { return h.s.target }

// ServeHTTP tunnels r as one /httpgrpc.HTTP/Handle call and writes the
// answer, gateway-made errors included (see Handle).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var e *Error
	if errors.As(h.Handle(w, r), &e) {
		e.Write(w, h.s.retryAfter.Value(r))
	}
}

// Handle tunnels r like ServeHTTP, but returns a gateway-made error as an
// *Error instead of writing it, so that the caller can answer it its own
// way (Caddy's handle_errors); the metrics and OnDone count it with its
// status. Whatever a component answered is written. It returns nil when
// the answer was written or the client went away.
func (h *Handler) Handle(w http.ResponseWriter, r *http.Request) error {
	h.active.enter()
	defer h.active.leave()
	return h.handle(w, r, nil, &h.own)
}

// site is what a request brings from the configuration that sent it: a
// Priority's, or the Handler's own when it is used alone. It never lives on
// a Handler shared between configurations, so that what one configuration
// says (or a reload that failed) changes nothing for another.
type site struct {
	budget *Budget     // holds the request's body
	logger *zap.Logger // receives its failure; nil: the Handler's
	tee    Tee         // gets every request before its call; nil: none
}

// handle is Handle with the groups a call that fails UNAVAILABLE may spill
// to (see Priority) and the site of the request; the metrics and the
// endpoint's hold are those of the group that made the last attempt.
func (h *Handler) handle(w http.ResponseWriter, r *http.Request, spill []*Handler, st *site) error {
	start := time.Now()
	m := h.metrics
	if m != nil {
		m.inFlight.Inc()
	}
	c := getCall()
	c.group, c.spill, c.site = h, spill, st
	code, err := h.serve(w, r, c, start)
	if err != nil {
		code = err.Status
	}
	ep := c.endpoint.Load()
	g := c.group
	if m != nil {
		m.inFlight.Dec()
		m.duration.Observe(time.Since(start).Seconds())
		if ep == nil {
			m.inc(&h.tracker.none.counters, noEndpoint, code)
		} else {
			g.metrics.inc(&ep.counters, ep.addr, code)
		}
	}
	if h.s.onDone != nil {
		h.s.onDone(r, addrOf(ep), code)
	}
	if ep != nil {
		g.tracker.release(ep) // the call's hold on the endpoint's series
	}
	putCall(c)
	if err != nil {
		return err
	}
	return nil
}

func addrOf(ep *endpoint) string {
	if ep == nil {
		return ""
	}
	return ep.addr
}

// serve does the work of Handle: it returns the status written, or the
// gateway-made error to answer.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, c *call, start time.Time) (int, *Error) {
	var tenant string
	if v := r.Header[tenantHeader]; len(v) > 0 {
		tenant = v[0]
	}
	if tenant == "" {
		return 0, h.newError(c, r, http.StatusUnauthorized, "no org id") // Mimir's exact text
	}
	if err := orgid.Check(tenant); err != nil {
		return 0, h.newError(c, r, http.StatusBadRequest, "invalid X-Scope-OrgID: "+err.Error())
	}
	// The timeout runs from the start of the request: a slow upload uses
	// it up as much as a slow answer does.
	deadline := start.Add(h.s.timeout)
	buf, n, err := h.readBody(w, r, deadline, c.site.budget)
	if err != nil {
		return h.bodyError(c, r, err)
	}
	c.setBody(buf, n)
	defer c.releaseBody()
	var replace []httpgrpc.Header
	if h.s.replaceHeaders != nil {
		replace = h.s.replaceHeaders(r)
	}
	c.setRequest(r, replace)

	ctx := context.WithValue(r.Context(), callKey{}, c)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ctx = metadata.NewOutgoingContext(ctx, c.outgoingMD(tenant))
	if err := h.invoke(ctx, c); err != nil {
		c.releaseBody() // the call is done, as below: its error answer may meet a slow reader
		return h.callError(w, r, c, err)
	}
	if hm := c.group.tracker.health; hm != nil {
		hm.answered(c.endpoint.Load(), int(c.resp.Code))
	}
	if !validStatus(int(c.resp.Code)) {
		return 0, h.failed(c, r, http.StatusBadGateway, fmt.Sprintf("invalid status %d", c.resp.Code))
	}
	if c.site.tee != nil && c.resp.Code/100 == 2 && int64(len(c.resp.Body)) <= h.s.maxResponse {
		// Once the primary accepted it (and the client is told so, not
		// 502 for an answer over max_response_body): the copy never
		// competes with the primary's call, and a push the client will
		// retry (refused or failed) is not copied twice.
		c.site.tee.Copy(c.view(tenant))
	}
	// The call is done: the body leaves the budget before a client that
	// reads its answer slowly could keep it there.
	c.releaseBody()
	return h.relay(w, r, c, &c.resp)
}

// relay writes the component's answer. A 499 is Mimir's answer to a
// request whose context it saw canceled; with the client still connected,
// the client closed nothing, and a 4xx would make a remote-write client
// drop the batch: it gets a 503, which it retries, as for CANCELLED on the
// way. A client that went away is relayed the 499 (it never reads it).
func (h *Handler) relay(w http.ResponseWriter, r *http.Request, c *call, resp *httpgrpc.HTTPResponse) (int, *Error) {
	if resp.Code == StatusClientClosedRequest && r.Context().Err() == nil {
		return 0, h.failed(c, r, http.StatusServiceUnavailable,
			"the component canceled the request (499) while the client was still connected: "+excerpt(resp.Body))
	}
	if int64(len(resp.Body)) > h.s.maxResponse {
		// gRPC's receive limit has room for the message's own overhead,
		// and error answers travel in the call's status, outside it.
		if resp.Code < 400 {
			return 0, h.failed(c, r, http.StatusBadGateway,
				fmt.Sprintf("response larger than %d bytes (max_response_body)", h.s.maxResponse))
		}
		resp.Body = resp.Body[:h.s.maxResponse] // the status is what a client acts on
	}
	h.answering(r, c.endpoint.Load())
	return writeResponse(w, resp, r.Method == http.MethodHead), nil
}

// excerpt is the start of a component's answer body for a one-line error.
func excerpt(body []byte) string {
	const shown = 200
	if len(body) > shown {
		return strings.ToValidUTF8(string(body[:shown]), "") + "..."
	}
	return strings.ToValidUTF8(string(body), "")
}

// invoke makes the call on this Handler's ClientConn and, when it fails
// UNAVAILABLE after its retries (every endpoint of the group tried or
// gone), on the next group of c.spill that has a READY endpoint, within
// the same deadline. Nothing has been written at that point, and the
// request message is the same already-read one.
func (h *Handler) invoke(ctx context.Context, c *call) error {
	err := h.conn.Invoke(ctx, handleMethod, &c.req, &c.resp)
	for err != nil && h.s.retries > 0 && ctx.Err() == nil && status.Code(err) == codes.Unavailable {
		next := nextGroup(c)
		if next == nil {
			return err
		}
		if ep := c.endpoint.Swap(nil); ep != nil {
			c.group.tracker.release(ep)
		}
		c.group = next
		// The earlier attempt's transport may still hold the prefix it
		// sent from the headroom: encode this one apart.
		c.req.shared = true
		err = next.conn.Invoke(ctx, handleMethod, &c.req, &c.resp)
	}
	return err
}

// nextGroup takes the first group of c.spill with a READY (and healthy)
// endpoint off the list; nil when none is left.
func nextGroup(c *call) *Handler {
	for len(c.spill) > 0 {
		g := c.spill[0]
		c.spill = c.spill[1:]
		if g.Available() > 0 {
			return g
		}
	}
	return nil
}

// readBody reads the request body, giving the client until deadline: the
// connection's read deadline is set to it for the upload (where the server
// supports it), unless the server's own read timeout (Caddy's read_body)
// ends first and so stays in force; it is cleared afterwards.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, deadline time.Time, budget *Budget) (*[]byte, int, error) {
	if r.ContentLength == 0 {
		return readBody(r.Body, 0, h.s.maxBody, budget)
	}
	var rc *http.ResponseController
	if !serverReadsUntilBefore(r, deadline) {
		if rc = http.NewResponseController(w); rc.SetReadDeadline(deadline) != nil {
			rc = nil // not supported: the server's own timeouts apply
		}
	}
	buf, n, err := readBody(r.Body, r.ContentLength, h.s.maxBody, budget)
	if rc != nil {
		_ = rc.SetReadDeadline(time.Time{})
	}
	if err != nil && !errors.Is(err, ErrBodyTooLarge) && !errors.Is(err, ErrBudgetFull) && !time.Now().Before(deadline) {
		err = errBodyTimeout
	}
	return buf, n, err
}

// serverReadsUntilBefore reports whether the server's read timeout, which
// net/http counts from the start of the request, ends before deadline.
func serverReadsUntilBefore(r *http.Request, deadline time.Time) bool {
	srv, _ := r.Context().Value(http.ServerContextKey).(*http.Server)
	return srv != nil && srv.ReadTimeout > 0 && time.Now().Add(srv.ReadTimeout).Before(deadline)
}

// errBodyTimeout is a body that did not arrive within the timeout.
var errBodyTimeout = errors.New("request body not received in time")

// bodyError answers a request whose body could not be read.
func (h *Handler) bodyError(c *call, r *http.Request, err error) (int, *Error) {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.Is(err, ErrBodyTooLarge):
		return 0, h.failed(c, r, http.StatusRequestEntityTooLarge,
			fmt.Sprintf("request body larger than %d bytes", h.s.maxBody))
	case errors.As(err, &tooLarge):
		// A request_body { max_size } before the gateway cut the body.
		return 0, h.failed(c, r, http.StatusRequestEntityTooLarge,
			fmt.Sprintf("request body larger than %d bytes (request_body max_size)", tooLarge.Limit))
	case errors.Is(err, ErrBudgetFull):
		return 0, h.failed(c, r, http.StatusServiceUnavailable,
			fmt.Sprintf("request bodies held at max_buffered_bytes (%d bytes); try again later", c.site.budget.Limit()))
	case errors.Is(err, errBodyTimeout):
		return 0, h.failed(c, r, http.StatusRequestTimeout,
			fmt.Sprintf("request body not received within %v", h.s.timeout))
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The server's read timeout (Caddy's read_body) passed first.
		return 0, h.failed(c, r, http.StatusRequestTimeout, "the request body did not arrive within the server's read timeout")
	default:
		// Answered even when the request's context is done: net/http
		// cancels it on any read error of the connection, also when the
		// client only half-closed it or its read timeout passed, and with
		// nothing written it would send such a client an empty 200. A
		// client that is gone never reads this.
		return 0, h.failed(c, r, http.StatusBadRequest, "reading request body: "+err.Error())
	}
}

// callError answers a failed call following mapError.
func (h *Handler) callError(w http.ResponseWriter, r *http.Request, c *call, err error) (int, *Error) {
	o := mapError(err)
	if o.resp != nil {
		return h.relay(w, r, c, o.resp)
	}
	if o.code == StatusClientClosedRequest && r.Context().Err() != nil {
		h.logFailure(c, r, StatusClientClosedRequest, "client went away: "+o.msg)
		// Answered all the same: net/http also cancels the context of a
		// client that only half-closed its connection, and with nothing
		// written it would send that client an empty 200. A client that is
		// gone never reads this. Counted as 499 all the same: the client
		// ended the call, not the backend; not an answer for OnAnswer.
		(&Error{Status: http.StatusServiceUnavailable, Msg: h.s.backend + ": call canceled: the client closed its side of the connection"}).Write(w, "")
		return o.code, nil
	}
	if o.code == StatusClientClosedRequest && o.grpcCode != codes.Canceled {
		// A component's 499 as the code of a status without details, the
		// client still connected: as relay answers a 499 in an answer.
		return 0, h.failed(c, r, http.StatusServiceUnavailable,
			"the component canceled the request (499) while the client was still connected: "+o.msg)
	}
	if o.grpcCode == codes.Canceled && h.closed.Load() {
		// Closed under a late request (e.g. a reload released it): the
		// client should retry elsewhere, not read 499.
		return 0, h.failed(c, r, http.StatusServiceUnavailable, "closed: "+o.msg)
	}
	if o.grpcCode == codes.Canceled {
		// The client is still there: the call was canceled on the way
		// (RST_STREAM CANCEL from the endpoint or a proxy in between). A
		// 4xx would make a remote-write client drop the batch; 503 makes
		// it retry, and the passive health check counts it against the
		// endpoint.
		return 0, h.failed(c, r, http.StatusServiceUnavailable, "call canceled on the way to the endpoint: "+o.msg)
	}
	if o.grpcCode == codes.ResourceExhausted && h.responseTooLarge(o.msg) {
		return 0, h.failed(c, r, http.StatusBadGateway,
			fmt.Sprintf("response larger than %d bytes (max_response_body)", h.s.maxResponse))
	}
	return 0, h.failed(c, r, o.code, describe(o, h.s.timeout))
}

// responseTooLarge reports whether a RESOURCE_EXHAUSTED message is gRPC's
// own receive limit on this side: "received message larger than max
// (n vs. limit)" with this Handler's receive limit. The same text from the
// endpoint (its receive limit, i.e. the request was too large) names the
// endpoint's limit instead.
func (h *Handler) responseTooLarge(msg string) bool {
	return strings.Contains(msg, "received message") && strings.Contains(msg, "larger than max") &&
		strings.Contains(msg, strconv.FormatInt(h.s.maxResponse+MaxMessageOverhead, 10))
}

// describe says in one line what failed for a gateway-made error.
func describe(o outcome, timeout time.Duration) string {
	switch o.grpcCode {
	case codes.DeadlineExceeded:
		return fmt.Sprintf("no answer within %v", timeout)
	case codes.Unavailable:
		return "unavailable: " + o.msg
	case codes.Canceled:
		return "call canceled: " + o.msg
	}
	return o.msg
}

// failed makes a gateway-made error whose line names the backend (and
// the endpoint of c's last attempt) and what failed.
func (h *Handler) failed(c *call, r *http.Request, code int, msg string) *Error {
	where := h.s.backend
	if ep := c.endpoint.Load(); ep != nil {
		where += " " + ep.addr
	}
	return h.newError(c, r, code, where+": "+msg)
}

// newError makes a gateway-made error of one line, logs it (logFailure)
// and tells OnAnswer.
func (h *Handler) newError(c *call, r *http.Request, code int, line string) *Error {
	line = strings.ReplaceAll(line, "\n", " ")
	h.logFailure(c, r, code, line)
	h.answering(r, c.endpoint.Load())
	return &Error{Status: code, Msg: line}
}

// answering calls OnAnswer.
func (h *Handler) answering(r *http.Request, ep *endpoint) {
	if h.s.onAnswer != nil {
		h.s.onAnswer(r, addrOf(ep))
	}
}

// Error is a gateway-made answer: a status and one line that names the
// backend (and the endpoint, when one was picked) and what failed.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// Write writes e: text/plain, one line, and on a 429 or 503 retryAfter as
// Retry-After (none when ""; see RetryAfter).
func (e *Error) Write(w http.ResponseWriter, retryAfter string) {
	hdr := w.Header()
	hdr["Content-Type"] = textPlain
	hdr["X-Content-Type-Options"] = noSniff
	e.SetRetryAfter(hdr, retryAfter)
	w.WriteHeader(e.Status)
	_, _ = io.WriteString(w, e.Msg+"\n")
}

// SetRetryAfter sets value as Retry-After in h if e is a 429 or 503 (the
// failure is the gateway's or the cluster's, the client should come back)
// and value is not "".
func (e *Error) SetRetryAfter(h http.Header, value string) {
	if value != "" && (e.Status == http.StatusTooManyRequests || e.Status == http.StatusServiceUnavailable) {
		h["Retry-After"] = []string{value}
	}
}

// Header values shared by every gateway-made error (never modified).
var (
	textPlain = []string{"text/plain; charset=utf-8"}
	noSniff   = []string{"nosniff"}
)

// writeResponse writes a component's answer: status, headers (without
// hop-by-hop ones, those its Connection header lists and malformed ones, see
// relayable) and body, and returns the status. head says it answers a HEAD
// request, whose Content-Length is the length a GET would have.
func writeResponse(w http.ResponseWriter, resp *httpgrpc.HTTPResponse, head bool) int {
	var connection []string
	for _, hd := range resp.Headers {
		if http.CanonicalHeaderKey(hd.Key) == "Connection" {
			connection = append(connection, hd.Values...)
		}
	}
	hdr := w.Header()
	for _, hd := range resp.Headers {
		k := http.CanonicalHeaderKey(hd.Key)
		if relayable(k, hd.Values) && (connection == nil || !ConnectionLists(connection, k)) {
			if prior := hdr[k]; len(prior) > 0 {
				// Added to what handlers before this one set, as
				// reverse_proxy does (a site's Set-Cookie stays).
				hdr[k] = append(prior[:len(prior):len(prior)], hd.Values...)
			} else {
				hdr[k] = hd.Values
			}
		}
	}
	dropWrongContentLength(hdr, len(resp.Body), head)
	code := int(resp.Code)
	w.WriteHeader(code)
	if len(resp.Body) > 0 {
		_, _ = w.Write(resp.Body)
	}
	return code
}
