package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// dnsName is the name every system under test resolves to find the
// stand-ins, like a headless Service.
const dnsName = "distributors.bench"

// The mirror phase's names: a second cluster of stand-ins (mirrorName), one
// whose stand-ins never answer in time (mirrorHungName), and an address
// nothing listens on (mirrorDownName, connection refused).
const (
	mirrorName     = "mirror.bench"
	mirrorHungName = "mirror-hung.bench"
	mirrorDownName = "mirror-down.bench"
	// mirrorDownIP is on loopback, and no stand-in listens there.
	mirrorDownIP = "127.0.0.254"
)

// mirrorHang is how long a hung mirror stand-in holds a copy before it
// answers, whether the gateway still waits or not.
const mirrorHang = 30 * time.Second

// standinsInfo is the one JSON line the standins process prints on stdout
// once everything listens.
type standinsInfo struct {
	IPs      []string `json:"ips"`
	HTTPPort int      `json:"http_port"`
	GRPCPort int      `json:"grpc_port"`
	DNS      string   `json:"dns"`
	Control  string   `json:"control"`
	// The mirror clusters (-mirror > 0): mirrorName's stand-ins and
	// mirrorHungName's on ports of their own (mirrorDownName: the
	// healthy mirror's port on mirrorDownIP).
	MirrorIPs      []string `json:"mirror_ips,omitempty"`
	MirrorGRPCPort int      `json:"mirror_grpc_port,omitempty"`
	HungGRPCPort   int      `json:"hung_grpc_port,omitempty"`
}

// standinStats is what the control endpoint reports for one stand-in.
type standinStats struct {
	Name      string `json:"name"`
	IP        string `json:"ip"`
	Requests  int64  `json:"requests"`
	Samples   int64  `json:"samples"`
	GRPCCalls int64  `json:"grpc_calls"`
}

// statsReply is the control endpoint's answer to GET /stats.
type statsReply struct {
	Work     string         `json:"work"`
	Standins []standinStats `json:"standins"`
	// Mirror are the healthy mirror cluster's stand-ins, then the hung
	// one's.
	Mirror []standinStats `json:"mirror,omitempty"`
}

// Work modes of the stand-ins.
const (
	workDecode = "decode" // snappy + protobuf decode, like a distributor's first step
	workCount  = "count"  // read the body and answer 200, so the proxy is the bottleneck
)

// runStandins is the `standins` subcommand: N distributor stand-ins, each
// serving the SAME standin.Distributor over HTTP (127.0.0.{2..}:httpPort) and
// over dskit's httpgrpc (127.0.0.{2..}:grpcPort), a DNS server answering
// distributors.bench with their addresses, and a control endpoint on
// 127.0.0.1 for counters and the work mode. It stops when stdin closes, on
// SIGTERM/SIGINT, or after -max-lifetime.
func runStandins(args []string) int {
	fs := flag.NewFlagSet("standins", flag.ExitOnError)
	n := fs.Int("n", 3, "number of stand-ins (127.0.0.2 ...); 0: none, only the mirror clusters (-mirror)")
	work := fs.String("work", workDecode, "initial work mode: decode or count")
	codec := fs.String("codec", codecMimir, "how the gRPC stand-ins decode requests: mimir (as a Mimir process does) or grpc (grpc-go's default proto codec)")
	workers := fs.Int("grpc-workers", mimirGRPCWorkers, "gRPC stream workers of each stand-in (grpc.NumStreamWorkers; 0: a goroutine per call)")
	mirrors := fs.Int("mirror", 0, "stand-ins of each mirror cluster (the healthy one and the hung one, gRPC only; 0: none)")
	maxLife := fs.Duration("max-lifetime", 40*time.Minute, "exit after this long whatever happens")
	_ = fs.Parse(args)
	if *n < 0 || *mirrors < 0 || *n+*mirrors == 0 {
		fmt.Fprintln(os.Stderr, "standins: need -n >= 0, -mirror >= 0, one of them > 0")
		return 2
	}

	grpcOpts, err := standinGRPCOptions(*codec)
	if err != nil {
		fmt.Fprintln(os.Stderr, "standins:", err)
		return 2
	}
	if *workers > 0 {
		grpcOpts = append(grpcOpts, standin.WithServerOptions(grpc.NumStreamWorkers(uint32(*workers))))
	}
	if err := serveStandins(*n, *mirrors, *work, *maxLife, grpcOpts); err != nil {
		fmt.Fprintln(os.Stderr, "standins:", err)
		return 1
	}
	return 0
}

// mimirGRPCWorkers is Mimir's -server.grpc.num-workers default: its gRPC
// servers hand calls to 100 long-lived goroutines instead of starting one
// per call (dskit's and grpc-go's default).
const mimirGRPCWorkers = 100

// Codecs of the gRPC stand-ins (-standins-codec).
const (
	codecMimir = "mimir" // Mimir's own codec: power-of-two pooled buffers
	codecGRPC  = "grpc"  // grpc-go's default: a 1 MiB pooled buffer per push of 32 KiB-1 MiB
)

// standinGRPCOptions returns the stand-ins' gRPC server options for a codec.
func standinGRPCOptions(codec string) ([]standin.GRPCOption, error) {
	switch codec {
	case codecMimir:
		return []standin.GRPCOption{standin.WithMimirCodec()}, nil
	case codecGRPC:
		return nil, nil
	default:
		return nil, fmt.Errorf("codec %q is neither %s nor %s", codec, codecMimir, codecGRPC)
	}
}

func serveStandins(n, mirrors int, work string, maxLife time.Duration, grpcOpts []standin.GRPCOption) error {
	dists := make([]*standin.Distributor, n)
	for i := range dists {
		dists[i] = standin.NewDistributor(string(rune('a' + i)))
	}
	// The mirror clusters: healthy ones (working as the primary's do) and
	// hung ones, which hold every copy mirrorHang.
	healthy, hung := make([]*standin.Distributor, mirrors), make([]*standin.Distributor, mirrors)
	for i := range mirrors {
		healthy[i] = standin.NewDistributor(fmt.Sprintf("mirror-%d", i+1))
		hung[i] = standin.NewDistributor(fmt.Sprintf("hung-%d", i+1))
	}
	var workMu sync.Mutex
	sick, sickIndex := sickNone, 1
	// apply gives every stand-in the behaviour of the work mode, the sick
	// one (sickIndex) its sickness on top, and the hung ones hang.
	apply := func() {
		var b standin.Behavior
		if work == workCount {
			b = countOnly
		}
		for i, d := range dists {
			if i == sickIndex {
				d.SetBehavior(sickBehavior(sick, b))
				continue
			}
			d.SetBehavior(b)
		}
		for _, d := range healthy {
			d.SetBehavior(b)
		}
		for _, d := range hung {
			d.SetBehavior(hang)
		}
	}
	setWork := func(mode string) error {
		workMu.Lock()
		defer workMu.Unlock()
		if mode != workDecode && mode != workCount {
			return fmt.Errorf("unknown work mode %q", mode)
		}
		work = mode
		apply()
		return nil
	}
	setSick := func(mode string) error {
		workMu.Lock()
		defer workMu.Unlock()
		if mode != sickNone && mode != sickSlow && mode != sick503 {
			return fmt.Errorf("unknown sickness %q", mode)
		}
		sick = mode
		apply()
		return nil
	}
	if err := setWork(work); err != nil {
		return err
	}

	// -n 0: no primary stand-ins (the mirror phase's second process).
	var grpcs []*standin.GRPCServer
	var err error
	if n > 0 {
		if grpcs, err = standin.StartGRPCGroup(handlersOf(dists), grpcOpts...); err != nil {
			return err
		}
	}
	defer func() {
		for _, g := range grpcs {
			g.Stop()
		}
	}()
	var healthyGRPCs, hungGRPCs []*standin.GRPCServer
	defer func() {
		for _, g := range slices.Concat(healthyGRPCs, hungGRPCs) {
			g.Stop()
		}
	}()
	if mirrors > 0 {
		if healthyGRPCs, err = standin.StartGRPCGroup(handlersOf(healthy), grpcOpts...); err != nil {
			return err
		}
		if hungGRPCs, err = standin.StartGRPCGroup(handlersOf(hung), grpcOpts...); err != nil {
			return err
		}
	}

	var httpLis []net.Listener
	if n > 0 {
		if httpLis, err = listenHTTPGroup(n); err != nil {
			return err
		}
	}
	var httpSrvs []*http.Server
	ips := make([]string, n)
	for i, l := range httpLis {
		ips[i] = standin.GroupIP(i)
		srv := &http.Server{Handler: dists[i], ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute}
		httpSrvs = append(httpSrvs, srv)
		go func() { _ = srv.Serve(l) }()
	}
	defer func() {
		for _, s := range httpSrvs {
			_ = s.Close()
		}
	}()

	dnsSrv, err := standin.StartDNS()
	if err != nil {
		return err
	}
	defer func() { _ = dnsSrv.Stop() }()
	if n > 0 {
		dnsSrv.SetA(dnsName, ips...)
	}
	var mirrorIPs []string
	if mirrors > 0 {
		for i := range mirrors {
			mirrorIPs = append(mirrorIPs, standin.GroupIP(i))
		}
		dnsSrv.SetA(mirrorName, mirrorIPs...)
		dnsSrv.SetA(mirrorHungName, mirrorIPs...)
		dnsSrv.SetA(mirrorDownName, mirrorDownIP)
	}

	ctlLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		workMu.Lock()
		rep := statsReply{Work: work}
		workMu.Unlock()
		rep.Standins = statsOf(dists, ips, grpcs)
		rep.Mirror = append(statsOf(healthy, mirrorIPs, healthyGRPCs), statsOf(hung, mirrorIPs, hungGRPCs)...)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rep)
	})
	// Work changes are made between runs, never during one.
	mux.HandleFunc("POST /work", func(w http.ResponseWriter, r *http.Request) {
		if err := setWork(r.URL.Query().Get("mode")); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	// One stand-in (the second) made slow or failing, between runs.
	mux.HandleFunc("POST /sick", func(w http.ResponseWriter, r *http.Request) {
		if err := setSick(r.URL.Query().Get("mode")); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	// Profiles of the stand-ins (-standins-profile): what each system's
	// traffic costs the distributors' side.
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	ctl := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = ctl.Serve(ctlLis) }()
	defer func() { _ = ctl.Close() }()

	info := standinsInfo{IPs: ips, DNS: dnsSrv.Addr(), Control: ctlLis.Addr().String()}
	if n > 0 {
		info.HTTPPort, info.GRPCPort = httpLis[0].Addr().(*net.TCPAddr).Port, grpcs[0].Port()
	}
	if mirrors > 0 {
		info.MirrorIPs, info.MirrorGRPCPort, info.HungGRPCPort = mirrorIPs, healthyGRPCs[0].Port(), hungGRPCs[0].Port()
	}
	line, _ := json.Marshal(info)
	fmt.Println(string(line))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	stdinClosed := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(stdinClosed) }()
	select {
	case <-ctx.Done():
	case <-stdinClosed:
	case <-time.After(maxLife):
		return errors.New("max lifetime reached")
	}
	return nil
}

// handlersOf is ds as HTTP handlers.
func handlersOf(ds []*standin.Distributor) []http.Handler {
	hs := make([]http.Handler, len(ds))
	for i, d := range ds {
		hs[i] = d
	}
	return hs
}

// statsOf are the counters of the stand-ins ds, on ips and served over gRPC
// by gs.
func statsOf(ds []*standin.Distributor, ips []string, gs []*standin.GRPCServer) []standinStats {
	var out []standinStats
	for i, d := range ds {
		out = append(out, standinStats{Name: d.Name(), IP: ips[i], Requests: d.Requests(), Samples: d.Samples(), GRPCCalls: gs[i].Calls()})
	}
	return out
}

// Sicknesses of the sick stand-in.
const (
	sickNone = "none"
	sickSlow = "slow" // answers sickDelay late
	sick503  = "503"  // answers every request 503, as a distributor whose ingesters are down
)

// sickDelay is how late the slow stand-in answers.
const sickDelay = 20 * time.Millisecond

// sickBehavior wraps a stand-in's behaviour with a sickness.
func sickBehavior(mode string, next standin.Behavior) standin.Behavior {
	switch mode {
	case sickSlow:
		return func(w http.ResponseWriter, r *http.Request) bool {
			time.Sleep(sickDelay)
			return next != nil && next(w, r)
		}
	case sick503:
		return func(w http.ResponseWriter, _ *http.Request) bool {
			http.Error(w, "ingesters down", http.StatusServiceUnavailable)
			return true
		}
	}
	return next
}

// hang answers a request 200 after mirrorHang, whether its caller still
// waits or not: a mirror cluster that stopped answering in time.
func hang(w http.ResponseWriter, _ *http.Request) bool {
	time.Sleep(mirrorHang)
	w.WriteHeader(http.StatusOK)
	return true
}

// countOnly answers a push 200 once the Distributor has read (and counted)
// the body, without decoding it.
func countOnly(w http.ResponseWriter, r *http.Request) bool {
	if r.URL.Path != standin.PushPath {
		return false
	}
	w.WriteHeader(http.StatusOK)
	return true
}

// listenHTTPGroup opens n listeners on 127.0.0.2, 127.0.0.3, ... sharing one
// port (retried a few times if the port is taken on a later address).
func listenHTTPGroup(n int) ([]net.Listener, error) {
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		first, err := net.Listen("tcp", net.JoinHostPort(standin.GroupIP(0), "0"))
		if err != nil {
			return nil, err
		}
		lis := []net.Listener{first}
		port := strconv.Itoa(first.Addr().(*net.TCPAddr).Port)
		for i := 1; i < n && err == nil; i++ {
			var l net.Listener
			l, err = net.Listen("tcp", net.JoinHostPort(standin.GroupIP(i), port))
			if err == nil {
				lis = append(lis, l)
			}
		}
		if err == nil {
			return lis, nil
		}
		for _, l := range lis {
			_ = l.Close()
		}
		lastErr = err
	}
	return nil, fmt.Errorf("listening on %d addresses with one port: %w", n, lastErr)
}
