package standin

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/snappy"
)

// PushPath is the path the distributor serves Remote-Write on.
const PushPath = "/api/v1/push"

// Remote-Write 2.0 response headers reporting what was written.
const (
	HeaderSamplesWritten    = "X-Prometheus-Remote-Write-Samples-Written"
	HeaderHistogramsWritten = "X-Prometheus-Remote-Write-Histograms-Written"
	HeaderExemplarsWritten  = "X-Prometheus-Remote-Write-Exemplars-Written"
)

// Behavior lets a test make a Distributor misbehave. It runs after the request
// was recorded and before it is decoded; if it returns true it has answered the
// request and the Distributor does nothing more.
type Behavior func(w http.ResponseWriter, r *http.Request) bool

// Record is what a Distributor remembers about one request.
type Record struct {
	Time       time.Time
	Method     string
	URL        string // request URI as received (path and query)
	Header     http.Header
	BodySHA256 [32]byte
	BodyLen    int
	Tenant     string // X-Scope-OrgID header
}

// Distributor is an http.Handler that behaves like Mimir's distributor push
// endpoint for /api/v1/push:
//
//   - no X-Scope-OrgID header: 401 "no org id" (Mimir's auth middleware);
//   - a snappy Remote-Write 1.0 body: 200 with an empty body;
//   - a Remote-Write 2.0 body (Content-Type ContentTypeRW2): 204 with the
//     X-Prometheus-Remote-Write-{Samples,Histograms,Exemplars}-Written headers;
//   - an undecodable body: 400; other paths: 404; other methods: 405.
//
// It counts requests and samples, can keep the last N requests for
// assertions (KeepRecords) and can be made to misbehave (SetBehavior). It is
// safe for concurrent use.
type Distributor struct {
	name string

	requests   atomic.Int64
	samples    atomic.Int64
	histograms atomic.Int64
	exemplars  atomic.Int64
	behavior   atomic.Pointer[Behavior]

	mu      sync.Mutex
	keep    int
	records []Record
}

// NewDistributor returns a Distributor; name identifies it in test output.
func NewDistributor(name string) *Distributor {
	return &Distributor{name: name}
}

// Name returns the name given to NewDistributor.
func (d *Distributor) Name() string { return d.name }

// Requests returns how many requests reached the handler (any path, any outcome).
func (d *Distributor) Requests() int64 { return d.requests.Load() }

// Samples returns how many samples were accepted.
func (d *Distributor) Samples() int64 { return d.samples.Load() }

// Histograms returns how many histogram samples were accepted.
func (d *Distributor) Histograms() int64 { return d.histograms.Load() }

// Exemplars returns how many exemplars were accepted.
func (d *Distributor) Exemplars() int64 { return d.exemplars.Load() }

// SetBehavior installs (or with nil removes) the misbehaviour hook.
func (d *Distributor) SetBehavior(b Behavior) {
	if b == nil {
		d.behavior.Store(nil)
		return
	}
	d.behavior.Store(&b)
}

// KeepRecords makes the Distributor remember the last n requests (0 = none,
// the default). Existing records are dropped.
func (d *Distributor) KeepRecords(n int) {
	d.mu.Lock()
	d.keep = n
	d.records = nil
	d.mu.Unlock()
}

// Records returns a copy of the remembered requests, oldest first.
func (d *Distributor) Records() []Record {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Record(nil), d.records...)
}

// CheckWholeTenants checks, for a mirror that picks tenants by share, that
// every tenant in d's records got all of its pushes (each tenant pushed
// each times) and that their number is between lo and hi. It returns that
// number and what failed.
func (d *Distributor) CheckWholeTenants(each, lo, hi int) (tenants int, errs []error) {
	perTenant := map[string]int{}
	for _, rec := range d.Records() {
		perTenant[rec.Tenant]++
	}
	for tenant, n := range perTenant {
		if n != each {
			errs = append(errs, fmt.Errorf("%s: %d of its %d pushes, want all or none", tenant, n, each))
		}
	}
	if len(perTenant) < lo || len(perTenant) > hi {
		errs = append(errs, fmt.Errorf("%d tenants, want %d to %d", len(perTenant), lo, hi))
	}
	return len(perTenant), errs
}

// Reset zeroes the counters and drops the records; the behaviour stays.
func (d *Distributor) Reset() {
	d.requests.Store(0)
	d.samples.Store(0)
	d.histograms.Store(0)
	d.exemplars.Store(0)
	d.mu.Lock()
	d.records = nil
	d.mu.Unlock()
}

// ServeHTTP implements http.Handler.
func (d *Distributor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.requests.Add(1)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	d.record(r, body)
	if b := d.behavior.Load(); b != nil && (*b)(w, r) {
		return
	}
	switch {
	case r.URL.Path != PushPath:
		http.NotFound(w, r)
	case r.Method != http.MethodPost:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	case r.Header.Get("X-Scope-OrgID") == "":
		http.Error(w, "no org id", http.StatusUnauthorized)
	default:
		d.push(w, r, body)
	}
}

// push decodes a Remote-Write body and answers like Mimir does.
func (d *Distributor) push(w http.ResponseWriter, r *http.Request, body []byte) {
	raw, err := snappy.Decode(nil, body)
	if err != nil {
		http.Error(w, "snappy decode: "+err.Error(), http.StatusBadRequest)
		return
	}
	rw2 := isRW2(r.Header.Get("Content-Type"))
	var c PushCounts
	if rw2 {
		c, err = DecodeRW2(raw)
	} else {
		c, err = DecodeRW1(raw)
	}
	if err != nil {
		http.Error(w, "protobuf decode: "+err.Error(), http.StatusBadRequest)
		return
	}
	d.samples.Add(int64(c.Samples))
	d.histograms.Add(int64(c.Histograms))
	d.exemplars.Add(int64(c.Exemplars))
	if !rw2 {
		w.WriteHeader(http.StatusOK)
		return
	}
	h := w.Header()
	h.Set(HeaderSamplesWritten, strconv.Itoa(c.Samples))
	h.Set(HeaderHistogramsWritten, strconv.Itoa(c.Histograms))
	h.Set(HeaderExemplarsWritten, strconv.Itoa(c.Exemplars))
	w.WriteHeader(http.StatusNoContent)
}

// isRW2 reports whether a Content-Type names the Remote-Write 2.0 message.
func isRW2(contentType string) bool {
	return strings.Contains(strings.ReplaceAll(contentType, " ", ""), "proto=io.prometheus.write.v2.Request")
}

// record remembers the request when KeepRecords asked for it.
func (d *Distributor) record(r *http.Request, body []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.keep <= 0 {
		return
	}
	if len(d.records) >= d.keep {
		copy(d.records, d.records[1:])
		d.records = d.records[:len(d.records)-1]
	}
	d.records = append(d.records, Record{
		Time:       time.Now(),
		Method:     r.Method,
		URL:        r.RequestURI,
		Header:     r.Header.Clone(),
		BodySHA256: sha256.Sum256(body),
		BodyLen:    len(body),
		Tenant:     r.Header.Get("X-Scope-OrgID"),
	})
}
