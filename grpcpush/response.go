package grpcpush

import (
	"net/http"
	"strconv"

	"golang.org/x/net/http/httpguts"
)

// relayable reports whether a tunnelled response header (canonical key k) is
// copied to the client: not hop-by-hop, and a name and values net/http can
// write so that clients parse them. A component's header with a NUL or
// another control character in it would otherwise reach the client verbatim
// and make it drop the whole response as malformed.
func relayable(k string, values []string) bool {
	if isHopByHop(k) || !httpguts.ValidHeaderFieldName(k) {
		return false
	}
	for _, v := range values {
		if !httpguts.ValidHeaderFieldValue(v) {
			return false
		}
	}
	return true
}

// dropWrongContentLength removes a tunnelled Content-Length that does not
// match the body the gateway holds: relayed as it is, a shorter one would
// truncate the body and a longer one leave the client waiting for bytes that
// never come. Without it net/http sets the length itself. The answer to a
// HEAD request keeps any well-formed one: it has no body to match.
func dropWrongContentLength(hdr http.Header, bodyLen int, head bool) {
	v, ok := hdr["Content-Length"]
	if !ok {
		return
	}
	if len(v) == 1 {
		// ParseUint takes digits only: a "+5" that Go's client refuses
		// goes too.
		if n, err := strconv.ParseUint(v[0], 10, 63); err == nil && (head || n == uint64(bodyLen)) {
			return
		}
	}
	delete(hdr, "Content-Length")
}
