// Command demo shows, on one machine and on loopback only, what
// metrics_gateway does for Prometheus remote-write: it starts distributor
// stand-ins (served over gRPC through dskit's httpgrpc server, as Mimir's
// distributors are), a DNS server that lists them like a headless Service,
// the real gateway (Caddy with this module, loaded from examples/demo/Caddyfile)
// and a few keep-alive remote-write clients. The clients push first through
// the gateway, then pinned to distributors the way a Kubernetes Service pins
// each connection, and the demo prints how evenly the distributors were
// loaded in each case.
//
//	go run ./examples/demo [-duration 10s] [-clients 4] [-distributors 3] [-samples 2000] [-listen 127.0.0.1:0]
//
// It exits 0 when every push succeeded.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	cfg := DefaultConfig()
	flag.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of the run, split evenly between the gateway phase and the pinned phase")
	flag.IntVar(&cfg.Clients, "clients", cfg.Clients, "remote-write clients, each with one keep-alive connection")
	flag.IntVar(&cfg.Distributors, "distributors", cfg.Distributors, "distributor stand-ins (on 127.0.0.2, .3, ...)")
	flag.IntVar(&cfg.Samples, "samples", cfg.Samples, "samples per push")
	flag.StringVar(&cfg.Listen, "listen", cfg.Listen, "the gateway's address, on loopback (port 0: chosen by the system)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "demo: unexpected arguments %q\n", flag.Args())
		flag.Usage()
		os.Exit(2)
	}
	if fi, err := os.Stdout.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		cfg.Terminal = true
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	res, err := run(ctx, cfg, os.Stdout)
	stop()
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "\ndemo: interrupted; everything it started is stopped")
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
	if res.Failed() > 0 {
		os.Exit(1)
	}
}
