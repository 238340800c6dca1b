package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// pushTimeout bounds one push, as Prometheus' remote_timeout (30s) does.
const pushTimeout = 30 * time.Second

// warmUpTimeout bounds the wait until the gateway reaches every distributor.
const warmUpTimeout = 30 * time.Second

// dialer opens the clients' connections and counts them.
type dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	Dials() int64
}

// countingDialer dials the address asked for and counts the connections.
type countingDialer struct {
	d     net.Dialer
	dials atomic.Int64
	// pick, when set, chooses the address to dial instead.
	pick func() string
}

func newCountingDialer(pick func() string) *countingDialer {
	return &countingDialer{d: net.Dialer{Timeout: 10 * time.Second}, pick: pick}
}

func (c *countingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c.dials.Add(1)
	if c.pick != nil {
		addr = c.pick()
	}
	return c.d.DialContext(ctx, network, addr)
}

func (c *countingDialer) Dials() int64 { return c.dials.Load() }

// serviceDialer stands in for a Kubernetes Service's virtual IP: each new
// connection is sent to one backend and stays there for its whole life, as
// kube-proxy's DNAT does. kube-proxy picks the backend per connection at
// random in iptables and nftables mode, round-robin in IPVS mode (its
// default scheduler). The demo uses round-robin: the most even assignment a
// Service can make, so the pinned numbers are its best case, not a bad draw
// (at random, one distributor may as well get three clients and another
// none).
type serviceDialer struct {
	*countingDialer
	backends []string
	next     atomic.Uint64
	per      []atomic.Int64
}

func newServiceDialer(backends []string) *serviceDialer {
	s := &serviceDialer{backends: backends, per: make([]atomic.Int64, len(backends))}
	s.countingDialer = newCountingDialer(s.pick)
	return s
}

func (s *serviceDialer) pick() string {
	i := (s.next.Add(1) - 1) % uint64(len(s.backends))
	s.per[i].Add(1)
	return s.backends[i]
}

// perBackend returns how many connections went to each backend.
func (s *serviceDialer) perBackend() []int64 {
	n := make([]int64, len(s.per))
	for i := range s.per {
		n[i] = s.per[i].Load()
	}
	return n
}

// newClient returns a remote-write client that, like Prometheus' sender,
// keeps ONE HTTP/1.1 connection open and sends its pushes one after the
// other on it.
func newClient(d dialer) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         d.DialContext,
			MaxConnsPerHost:     1,
			MaxIdleConnsPerHost: 1,
			DisableCompression:  true,
		},
		Timeout: pushTimeout,
	}
}

// push sends one snappy-compressed Remote-Write 1.0 request.
func push(ctx context.Context, c *http.Client, url, tenant string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", standin.ContentTypeRW1)
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	req.Header.Set("User-Agent", "metrics-gateway-demo")
	req.Header.Set("X-Scope-OrgID", tenant)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	_, _ = io.Copy(io.Discard, resp.Body) // so the connection is reused
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// warmUp pushes through the gateway, one request at a time, until every
// distributor has received one: then the gateway has a ready connection to
// each and the measured phase starts from the steady state.
func warmUp(ctx context.Context, url, tenant string, body []byte, dists []*standin.Distributor) error {
	ctx, cancel := context.WithTimeout(ctx, warmUpTimeout)
	defer cancel()
	client := newClient(newCountingDialer(nil))
	defer client.CloseIdleConnections()
	before := snapshot(dists)
	var lastErr error
	for {
		missing := ""
		for i, d := range dists {
			if d.Requests() == before[i].Requests {
				missing = d.Name()
				break
			}
		}
		if missing == "" {
			return nil
		}
		if ctx.Err() != nil {
			if err := context.Cause(ctx); !errors.Is(err, context.DeadlineExceeded) {
				return err
			}
			return fmt.Errorf("%s got no request through the gateway within %s (last error: %v)", missing, warmUpTimeout, lastErr)
		}
		if lastErr = push(ctx, client, url, tenant, body); lastErr != nil {
			// The gateway may not have resolved the name or connected yet.
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// phaseSpec is one phase's clients and target.
type phaseSpec struct {
	name  string
	url   string
	dial  dialer
	dists []*standin.Distributor
	body  []byte
}

// runPhase runs cfg.Clients clients against spec.url for one phase and
// returns what each distributor received meanwhile.
func runPhase(ctx context.Context, cfg Config, out io.Writer, spec phaseSpec) (Phase, error) {
	before := snapshot(spec.dists)
	var (
		pushes, failed atomic.Int64
		firstErr       sync.Once
		ph             = Phase{Name: spec.name}
		stop           = make(chan struct{})
		wg             sync.WaitGroup
		clients        = make([]*http.Client, cfg.Clients)
	)
	start := time.Now()
	for i := range clients {
		clients[i] = newClient(spec.dial)
		c := clients[i]
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				err := push(ctx, c, spec.url, cfg.Tenant, spec.body)
				switch {
				case ctx.Err() != nil:
					return // interrupted: neither a success nor a failure
				case err != nil:
					failed.Add(1)
					firstErr.Do(func() { ph.FirstError = err.Error() })
				default:
					pushes.Add(1)
				}
			}
		})
	}

	p := progress{out: out, terminal: cfg.Terminal, name: spec.name, total: cfg.phase()}
	var tick <-chan time.Time
	if cfg.Progress > 0 {
		t := time.NewTicker(cfg.Progress)
		defer t.Stop()
		tick = t.C
	}
	timer := time.NewTimer(cfg.phase())
	defer timer.Stop()
	line := func() {
		p.update(time.Since(start), pushes.Load(), failed.Load(), since(before, spec.dists))
	}
wait:
	for {
		select {
		case <-timer.C:
			break wait
		case <-ctx.Done():
			break wait
		case <-tick:
			// The final line follows when the phase ends; skip an update
			// that would come just before it.
			if cfg.phase()-time.Since(start) > cfg.Progress/2 {
				line()
			}
		}
	}
	close(stop)
	wg.Wait() // the pushes in flight finish: none is cut off
	ph.Elapsed = time.Since(start)
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	if cfg.Progress > 0 {
		line()
		p.done()
	}
	if err := ctx.Err(); err != nil {
		return ph, err
	}
	ph.PerDistributor = since(before, spec.dists)
	ph.Pushes, ph.Failed = pushes.Load(), failed.Load()
	ph.Dials = spec.dial.Dials()
	return ph, nil
}

// snapshot reads every distributor's counters.
func snapshot(dists []*standin.Distributor) []Count {
	c := make([]Count, len(dists))
	for i, d := range dists {
		c[i] = Count{Name: d.Name(), Requests: d.Requests(), Samples: d.Samples()}
	}
	return c
}

// since returns what every distributor received after the snapshot before.
func since(before []Count, dists []*standin.Distributor) []Count {
	now := snapshot(dists)
	for i := range now {
		now[i].Requests -= before[i].Requests
		now[i].Samples -= before[i].Samples
	}
	return now
}
