package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	// A Caddy with its standard modules and metrics_gateway, as built by
	// `xcaddy build --with github.com/metrics-gateway/metrics_gateway`.
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/metrics-gateway/metrics_gateway"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// caddyfile is the gateway's configuration; run fills in its {$DEMO_*}
// environment placeholders.
//
//go:embed Caddyfile
var caddyfile []byte

// distributorsName is the DNS name the demo's DNS server answers with the
// distributors' addresses; the Caddyfile's distributor URL uses it.
const distributorsName = "mimir-distributor-headless.mimir.svc.cluster.local"

// Config is what one demo run does.
type Config struct {
	// Duration is the length of the whole run, split evenly between the two
	// phases.
	Duration time.Duration
	// Clients is the number of remote-write clients, each with one
	// keep-alive connection.
	Clients int
	// Distributors is the number of distributor stand-ins (1 to 250).
	Distributors int
	// Samples is the number of samples in each push (one per series, as
	// Prometheus sends them).
	Samples int
	// Listen is the gateway's address, on loopback. A port of 0 (the
	// default, "127.0.0.1:0") lets the operating system choose.
	Listen string
	// Tenant is the X-Scope-OrgID the clients send.
	Tenant string
	// Progress is how often a progress line is written; 0 writes none.
	Progress time.Duration
	// Terminal makes progress lines overwrite each other with \r.
	Terminal bool
}

// DefaultConfig returns the configuration of `go run ./examples/demo`.
func DefaultConfig() Config {
	return Config{
		Duration:     10 * time.Second,
		Clients:      4,
		Distributors: 3,
		Samples:      2000,
		Listen:       "127.0.0.1:0",
		Tenant:       "demo",
		Progress:     time.Second,
	}
}

func (c Config) check() error {
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("-listen %q: %v", c.Listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() || ip.To4() == nil {
		return fmt.Errorf("-listen %q: the demo runs on loopback only; use an address in 127.0.0.0/8", c.Listen)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("-listen %q: bad port", c.Listen)
	}
	switch {
	case c.Duration < 200*time.Millisecond:
		return errors.New("-duration must be at least 200ms")
	case c.Clients < 1:
		return errors.New("-clients must be at least 1")
	case c.Distributors < 1 || c.Distributors > 250:
		return errors.New("-distributors must be between 1 and 250")
	case c.Samples < 1:
		return errors.New("-samples must be at least 1")
	case c.Tenant == "":
		return errors.New("tenant must not be empty")
	}
	return nil
}

// phase is the length of one phase.
func (c Config) phase() time.Duration { return c.Duration / 2 }

// Count is what one distributor received in one phase.
type Count struct {
	Name     string
	Requests int64
	Samples  int64
	// Connections is how many client connections landed on the
	// distributor (pinned phase only).
	Connections int64
}

// Phase is the outcome of one phase.
type Phase struct {
	Name           string
	Elapsed        time.Duration
	PerDistributor []Count
	// Pushes counts successful pushes, Failed the others (interrupted
	// pushes are in neither).
	Pushes, Failed int64
	// FirstError describes the first failed push.
	FirstError string
	// Dials is how many connections the clients opened.
	Dials int64
}

// MaxMean is the largest number of samples a distributor received divided
// by the mean over all distributors: 1.00 is a perfectly even spread. It is
// NaN when no samples arrived.
func (p Phase) MaxMean() float64 {
	var total, largest int64
	for _, c := range p.PerDistributor {
		total += c.Samples
		largest = max(largest, c.Samples)
	}
	if total == 0 {
		return math.NaN()
	}
	return float64(largest) * float64(len(p.PerDistributor)) / float64(total)
}

// Result is the outcome of a demo run.
type Result struct {
	Config  Config
	Gateway Phase
	Pinned  Phase
}

// Failed is the number of failed pushes in both phases.
func (r *Result) Failed() int64 { return r.Gateway.Failed + r.Pinned.Failed }

// env is one {$DEMO_*} placeholder of the Caddyfile.
type env struct{ key, value string }

// run starts the demo's servers and the gateway on loopback, sends the same
// remote-write clients first through the gateway, then through a
// connection-pinned path, writes a report to out and stops everything it
// started. It returns an error when the demo could not run; failed pushes
// are in the Result.
func run(ctx context.Context, cfg Config, out io.Writer) (res *Result, err error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	var stops []func() error
	defer func() {
		for i := len(stops) - 1; i >= 0; i-- {
			if e := stops[i](); e != nil && err == nil {
				err = e
			}
		}
	}()

	// The distributors: one handler each, served over gRPC through dskit's
	// httpgrpc server on 127.0.0.2, .3, ... on one shared port, like the pods
	// behind a headless Service, and over plain HTTP on ports of their own
	// for the pinned phase.
	// The DNS server lists their addresses under one name.
	cluster, err := standin.StartCluster(distributorsName, cfg.Distributors)
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() error { cluster.Stop(); return nil })
	dists := cluster.Distributors
	httpAddrs := make([]string, cfg.Distributors)
	for i, d := range dists {
		addr, stop, err := serveHTTP(net.JoinHostPort(standin.GroupIP(i), "0"), d)
		if err != nil {
			return nil, err
		}
		stops = append(stops, stop)
		httpAddrs[i] = addr
	}
	othersAddr, stop, err := serveHTTP("127.0.0.1:0", http.HandlerFunc(notInDemo))
	if err != nil {
		return nil, err
	}
	stops = append(stops, stop)

	// The gateway: Caddy with metrics_gateway, loaded from the Caddyfile.
	dir, err := os.MkdirTemp("", "mgdemo")
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() error { return os.RemoveAll(dir) })
	adminSocket := filepath.Join(dir, "admin.sock")
	gatewayAddr, err := startCaddy(cfg.Listen, []env{
		{"DEMO_DIR", dir},
		{"DEMO_ADMIN_SOCKET", adminSocket},
		{"DEMO_DNS_SERVER", cluster.DNS.Addr()},
		{"DEMO_GRPC_PORT", cluster.Port},
		{"DEMO_OTHERS", othersAddr},
	})
	if err != nil {
		return nil, err
	}
	stops = append(stops, caddy.Stop)

	fmt.Fprintf(out, "metrics_gateway demo: %d remote-write clients (one keep-alive connection each, %s samples per push), %d distributors\n",
		cfg.Clients, thousands(int64(cfg.Samples)), cfg.Distributors)
	fmt.Fprintf(out, "  gateway       http://%s (Caddy with metrics_gateway, examples/demo/Caddyfile)\n", gatewayAddr)
	fmt.Fprintf(out, "  distributors  %s gRPC, found as %s at the DNS server %s\n",
		ipRange(cfg.Distributors, cluster.Port), distributorsName, cluster.DNS.Addr())
	fmt.Fprintf(out, "  admin API     curl --unix-socket %s http://localhost/metrics_gateway/backends (or /metrics)\n", adminSocket)

	body := standin.RemoteWriteBody(cfg.Samples, 1)
	gatewayURL := "http://" + gatewayAddr + standin.PushPath
	if err := warmUp(ctx, gatewayURL, cfg.Tenant, body, dists); err != nil {
		return nil, err
	}

	res = &Result{Config: cfg}
	fmt.Fprintf(out, "\nPhase 1, %s: through the gateway, each request goes to the next distributor\n", cfg.phase())
	res.Gateway, err = runPhase(ctx, cfg, out, phaseSpec{
		name:  "gateway",
		url:   gatewayURL,
		dial:  newCountingDialer(nil),
		dists: dists,
		body:  body,
	})
	if err != nil {
		return res, err
	}

	fmt.Fprintf(out, "\nPhase 2, %s: pinned like a Kubernetes Service, each connection stays on one distributor\n", cfg.phase())
	svc := newServiceDialer(httpAddrs)
	res.Pinned, err = runPhase(ctx, cfg, out, phaseSpec{
		name: "pinned",
		// The Service's name is never resolved: svc sends each new
		// connection to one distributor, as kube-proxy does.
		url:   "http://distributor.demo.svc.cluster.local:8080" + standin.PushPath,
		dial:  svc,
		dists: dists,
		body:  body,
	})
	if err != nil {
		return res, err
	}
	for i, n := range svc.perBackend() {
		res.Pinned.PerDistributor[i].Connections = n
	}

	fmt.Fprintln(out)
	writeReport(out, res)
	return res, nil
}

// serveHTTP serves h on addr until the returned stop function is called. It
// returns the address it listens on.
func serveHTTP(addr string, h http.Handler) (string, func() error, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	stop := func() error {
		err := srv.Close()
		<-done
		return err
	}
	return lis.Addr().String(), stop, nil
}

// notInDemo answers every request that is not a push: the demo runs no
// other Mimir component.
func notInDemo(w http.ResponseWriter, _ *http.Request) {
	http.Error(w, "the metrics_gateway demo runs distributors only; this component would answer here", http.StatusNotImplemented)
}

// startCaddy adapts the Caddyfile with the given placeholders and the
// gateway's address, and loads it. For a port of 0 it asks the operating
// system for a free port and hands it to Caddy, trying again (bounded) if
// something else took it in between.
func startCaddy(listen string, envs []env) (string, error) {
	host, port, _ := net.SplitHostPort(listen)
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		p := port
		if p == "0" {
			var err error
			if p, err = freePort(host); err != nil {
				return "", err
			}
		}
		vars := slices.Concat(envs, []env{{"DEMO_GATEWAY_HOST", host}, {"DEMO_GATEWAY_PORT", p}})
		cfgJSON, err := adapt(vars)
		if err != nil {
			return "", err
		}
		lastErr = caddy.Load(cfgJSON, true)
		if lastErr == nil {
			return net.JoinHostPort(host, p), nil
		}
		if port != "0" || !errors.Is(lastErr, syscall.EADDRINUSE) && !strings.Contains(lastErr.Error(), "address already in use") {
			break
		}
	}
	return "", fmt.Errorf("starting the gateway: %w", lastErr)
}

// adapt turns the embedded Caddyfile into Caddy's JSON config. Caddyfile
// {$VAR} placeholders are read from the environment, so the values are set
// for the duration of the call and restored afterwards.
func adapt(vars []env) ([]byte, error) {
	for _, v := range vars {
		old, had := os.LookupEnv(v.key)
		if err := os.Setenv(v.key, v.value); err != nil {
			return nil, err
		}
		defer func() {
			if had {
				_ = os.Setenv(v.key, old)
			} else {
				_ = os.Unsetenv(v.key)
			}
		}()
	}
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(caddyfile, map[string]any{"filename": "examples/demo/Caddyfile"})
	if err != nil {
		return nil, fmt.Errorf("adapting examples/demo/Caddyfile: %w", err)
	}
	if len(warnings) > 0 {
		return nil, fmt.Errorf("adapting examples/demo/Caddyfile: %s", warnings[0].String())
	}
	return cfgJSON, nil
}

// freePort returns a port that was free on host a moment ago.
func freePort(host string) (string, error) {
	lis, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer lis.Close()
	return strconv.Itoa(lis.Addr().(*net.TCPAddr).Port), nil
}

// ipRange writes the addresses of a group compactly: 127.0.0.2-4:port.
func ipRange(n int, port string) string {
	first, last := standin.GroupIP(0), standin.GroupIP(n-1)
	if n == 1 {
		return net.JoinHostPort(first, port)
	}
	return fmt.Sprintf("%s-%s:%s", first, last[strings.LastIndexByte(last, '.')+1:], port)
}
