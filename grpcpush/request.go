package grpcpush

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/grafana/dskit/grpcutil"
	"github.com/grafana/dskit/httpgrpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
)

// call is the per-request state. It is pooled so that a request allocates
// neither its header list nor its response message.
type call struct {
	req      tunnelRequest
	resp     httpgrpc.HTTPResponse
	headers  []httpgrpc.Header  // backing array of req.msg.Headers
	hptrs    []*httpgrpc.Header // req.msg.Headers
	host     [1]string          // Values of the Host header
	md       metadata.MD        // the outgoing metadata, see outgoingMD
	mdv      [4]string          // its values
	endpoint atomic.Pointer[endpoint]
	// group is the Handler whose endpoint the last attempt went to; spill
	// the groups still to try if it fails UNAVAILABLE (see Priority).
	group *Handler
	spill []*Handler
	site  *site
	tee   Request // the view a Tee gets (see view)
	// tried are the endpoints the call's attempts were picked for, so that
	// a retry goes to another one (see avoid).
	tried  [MaxRetries + 1]*endpoint
	ntried int
}

// triedBefore reports whether an earlier attempt of c was picked for ep.
func (c *call) triedBefore(ep *endpoint) bool {
	for _, t := range c.tried[:c.ntried] {
		if t == ep {
			return true
		}
	}
	return false
}

// noteTried records that an attempt of c was picked for ep.
func (c *call) noteTried(ep *endpoint) {
	if c.ntried < len(c.tried) {
		c.tried[c.ntried] = ep
		c.ntried++
	}
}

var callPool = sync.Pool{New: func() any { return new(call) }}

// maxPooledResponseBody bounds the response buffer a pooled call keeps.
const maxPooledResponseBody = 64 << 10

func getCall() *call { return callPool.Get().(*call) }

// putCall clears every reference into the finished request and pools c.
func putCall(c *call) {
	clear(c.headers)
	clear(c.hptrs)
	c.headers, c.hptrs = c.headers[:0], c.hptrs[:0]
	c.req.msg = httpgrpc.HTTPRequest{}
	c.req.buf, c.req.root, c.req.bodyLen, c.req.shared, c.req.msgSize = nil, nil, 0, false, 0
	body := c.resp.Body[:0]
	if cap(body) > maxPooledResponseBody {
		body = nil
	}
	c.resp = httpgrpc.HTTPResponse{Body: body}
	c.host[0] = ""
	c.mdv = [4]string{}
	c.endpoint.Store(nil)
	c.group, c.spill, c.site = nil, nil, nil
	c.tee = Request{}
	c.tried, c.ntried = [MaxRetries + 1]*endpoint{}, 0
	callPool.Put(c)
}

// outgoingMD returns the call's outgoing metadata: the tenant, and what
// dskit's own httpgrpc clients send (httpgrpc.AppendRequestMetadataToContext,
// grpcutil.AppendMessageSizeToOutgoingContext), which Mimir's gRPC push
// limiter (instance limits on in-flight pushes and bytes) reads to refuse a
// push before receiving its message. One map, kept in the pooled call, so
// that a request allocates only the size's text for it; gRPC reads it only
// while the call is made (its attempts included), before the call is pooled
// again. The request message must be complete.
func (c *call) outgoingMD(tenant string) metadata.MD {
	if c.md == nil {
		c.md = metadata.MD{
			tenantMetadataKey:            c.mdv[0:1:1],
			httpgrpc.MetadataMethod:      c.mdv[1:2:2],
			httpgrpc.MetadataURL:         c.mdv[2:3:3],
			grpcutil.MetadataMessageSize: c.mdv[3:4:4],
		}
	}
	c.mdv = [4]string{tenant, c.req.msg.Method, printable(c.req.msg.Url), strconv.Itoa(c.req.Size())}
	return c.md
}

// printable returns s with every byte that gRPC metadata cannot carry
// (outside printable ASCII) percent-escaped. Go's server takes a raw UTF-8
// query (curl sends one) that grpc-go would refuse to put in metadata,
// failing the call as a 500 that reverse_proxy serves; the message itself
// carries the URI as the client sent it.
func printable(s string) string {
	i := strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r > 0x7e })
	if i < 0 {
		return s
	}
	const hex = "0123456789ABCDEF"
	b := []byte(s[:i])
	for j := i; j < len(s); j++ {
		if c := s[j]; c < 0x20 || c > 0x7e {
			b = append(b, '%', hex[c>>4], hex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

// setBody hands the body buffer (from readBody) to the call. The call holds
// one reference until releaseBody; the codec takes more for gRPC.
func (c *call) setBody(buf *[]byte, n int) {
	*buf = (*buf)[:headroom+n]
	c.req.buf, c.req.bodyLen = buf, n
	c.req.root = mem.NewBuffer(buf, c.site.budget.lease(buf))
}

// releaseBody drops the call's reference to the body; the buffer returns to
// the pool once gRPC has dropped its own.
func (c *call) releaseBody() {
	if c.req.root != nil {
		c.req.root.Free()
		c.req.root = nil // once: the answer's writing may come after it
	}
}

// setRequest fills method, URL and the tunnelled headers from r, with the
// headers in replace instead of the client's of the same names. Header
// values are shared with r.Header, not copied.
func (c *call) setRequest(r *http.Request, replace []httpgrpc.Header) {
	c.req.msg.Method = r.Method
	c.req.msg.Url = r.RequestURI
	if !strings.HasPrefix(c.req.msg.Url, "/") {
		// A request built in code (no RequestURI), or one in absolute
		// form (http://user:pass@host/path): the component gets the
		// origin form, as from reverse_proxy, not the client's host and
		// credentials.
		c.req.msg.Url = r.URL.RequestURI()
	}
	connection := r.Header["Connection"]
	for k, vs := range r.Header {
		if isHopByHop(k) || (len(connection) > 0 && ConnectionLists(connection, k)) || replaced(replace, k) {
			continue
		}
		c.headers = append(c.headers, httpgrpc.Header{Key: k, Values: vs})
	}
	for _, hd := range replace {
		if hd.Values != nil {
			c.headers = append(c.headers, hd)
		}
	}
	if r.Host != "" {
		c.host[0] = r.Host
		c.headers = append(c.headers, httpgrpc.Header{Key: "Host", Values: c.host[:]})
	}
	for i := range c.headers {
		c.hptrs = append(c.hptrs, &c.headers[i])
	}
	c.req.msg.Headers = c.hptrs
}

// replaced reports whether replace has an entry for the canonical key k.
func replaced(replace []httpgrpc.Header, k string) bool {
	for i := range replace {
		if replace[i].Key == k {
			return true
		}
	}
	return false
}

// hopByHop are the headers of one HTTP hop (RFC 9110 section 7.6.1), and
// Alt-Svc, which advertises the backend's own alternative services; they
// are neither tunnelled nor copied from the response: reverse_proxy's list.
var hopByHop = map[string]bool{
	"Alt-Svc":             true,
	"Connection":          true,
	"Keep-Alive":          true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Proxy-Connection":    true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

// isHopByHop reports whether the canonical header key k is hop-by-hop.
func isHopByHop(k string) bool { return hopByHop[k] }

// ConnectionLists reports whether the values of a Connection header name
// header k, which then goes no further than this hop.
func ConnectionLists(connection []string, k string) bool {
	for _, v := range connection {
		for name := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(name), k) {
				return true
			}
		}
	}
	return false
}
