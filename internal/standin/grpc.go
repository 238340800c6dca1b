package standin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/grafana/dskit/httpgrpc"
	"github.com/grafana/dskit/httpgrpc/server"
	"github.com/grafana/dskit/middleware"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Mimir's gRPC server limits (see MIMIR-CONTRACT.md): a client that breaks
// them is refused here the same way a real distributor would refuse it.
const (
	MaxRecvMsgSize       = 100 << 20
	MaxSendMsgSize       = 100 << 20
	MaxConcurrentStreams = 100
	KeepaliveMinTime     = 10 * time.Second
)

type grpcConfig struct {
	interceptors []grpc.UnaryServerInterceptor
	serverOpts   []grpc.ServerOption
	tlsConfig    *tls.Config
}

// GRPCOption customises a GRPCServer.
type GRPCOption func(*grpcConfig)

// WithUnaryInterceptors adds interceptors that run BEFORE dskit's tenant
// interceptor, so they see every call (also ones without a tenant) and may
// answer it themselves, e.g. with a raw gRPC code or ErrorDetailsStatus.
func WithUnaryInterceptors(i ...grpc.UnaryServerInterceptor) GRPCOption {
	return func(c *grpcConfig) { c.interceptors = append(c.interceptors, i...) }
}

// WithServerOptions adds raw grpc.ServerOptions (applied after Mimir's limits,
// so they can override them).
func WithServerOptions(o ...grpc.ServerOption) GRPCOption {
	return func(c *grpcConfig) { c.serverOpts = append(c.serverOpts, o...) }
}

// WithTLS makes the server speak TLS with the given configuration.
func WithTLS(cfg *tls.Config) GRPCOption {
	return func(c *grpcConfig) { c.tlsConfig = cfg }
}

// GRPCServer serves an http.Handler over gRPC exactly as a Mimir component
// does: dskit's httpgrpc server (4xx and 5xx answers become gRPC errors that
// carry the HTTPResponse), dskit's tenant interceptor (a call without exactly
// one x-scope-orgid value fails with Unknown "no org id") and Mimir's limits.
type GRPCServer struct {
	srv   *grpc.Server
	lis   net.Listener
	calls atomic.Int64
	done  chan struct{}
	once  sync.Once

	// killed closes when Stop begins; a call's context carries it (see
	// Killed), so a behaviour that waits ends with the server.
	killed chan struct{}
}

// killedKey is the context key of a GRPCServer's killed channel.
type killedKey struct{}

// Killed returns a channel that closes when the server that took r is
// stopped with Stop (nil, which never closes, for a request that did not
// come through a GRPCServer).
func Killed(r *http.Request) <-chan struct{} {
	c, _ := r.Context().Value(killedKey{}).(chan struct{})
	return c
}

// StartGRPC listens on addr (e.g. "127.0.0.2:0") and serves h over gRPC until
// Stop or GracefulStop.
func StartGRPC(addr string, h http.Handler, opts ...GRPCOption) (*GRPCServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return serveGRPC(lis, h, opts...), nil
}

func serveGRPC(lis net.Listener, h http.Handler, opts ...GRPCOption) *GRPCServer {
	var cfg grpcConfig
	for _, o := range opts {
		o(&cfg)
	}
	s := &GRPCServer{lis: lis, done: make(chan struct{}), killed: make(chan struct{})}
	chain := []grpc.UnaryServerInterceptor{s.countCalls}
	chain = append(chain, cfg.interceptors...)
	chain = append(chain, middleware.ServerUserHeaderInterceptor)
	sopts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.MaxSendMsgSize(MaxSendMsgSize),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.ChainUnaryInterceptor(chain...),
	}
	if cfg.tlsConfig != nil {
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(cfg.tlsConfig)))
	}
	sopts = append(sopts, cfg.serverOpts...)
	s.srv = grpc.NewServer(sopts...)
	httpgrpc.RegisterHTTPServer(s.srv, server.NewServer(h, server.WithReturn4XXErrors))
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(lis)
	}()
	return s
}

// countCalls counts every call that reaches the server.
func (s *GRPCServer) countCalls(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	s.calls.Add(1)
	return next(context.WithValue(ctx, killedKey{}, s.killed), req)
}

// Addr returns the listening address as host:port.
func (s *GRPCServer) Addr() string { return s.lis.Addr().String() }

// Port returns the listening port.
func (s *GRPCServer) Port() int { return s.lis.Addr().(*net.TCPAddr).Port }

// Calls returns how many gRPC calls reached the server (before any interceptor
// could reject them).
func (s *GRPCServer) Calls() int64 { return s.calls.Load() }

// Stop closes the listener and every connection at once, failing in-flight
// calls, like a killed pod. It waits for the serving goroutine to end.
func (s *GRPCServer) Stop() {
	s.once.Do(func() {
		close(s.killed)
		s.srv.Stop()
		<-s.done
	})
}

// GracefulStop stops accepting new calls (GOAWAY) and waits for in-flight
// calls to finish, like a pod shutting down cleanly.
func (s *GRPCServer) GracefulStop() {
	s.once.Do(func() {
		s.srv.GracefulStop()
		<-s.done
	})
}

// groupAttempts bounds how often StartGRPCGroup retries when the shared port
// turns out to be taken on one of the addresses.
const groupAttempts = 20

// StartGRPCGroup starts one server per handler on 127.0.0.2, 127.0.0.3, ...
// all on the SAME port, like the pods behind a headless Service. The first
// listener asks for port 0; the others reuse its port. If the port is taken
// on another address, everything is closed and tried again (bounded).
func StartGRPCGroup(handlers []http.Handler, opts ...GRPCOption) ([]*GRPCServer, error) {
	if len(handlers) == 0 || len(handlers) > 250 {
		return nil, fmt.Errorf("standin: need 1 to 250 handlers, got %d", len(handlers))
	}
	var lastErr error
	for attempt := 0; attempt < groupAttempts; attempt++ {
		lis, err := listenGroup(len(handlers))
		if err == nil {
			servers := make([]*GRPCServer, len(handlers))
			for i, h := range handlers {
				servers[i] = serveGRPC(lis[i], h, opts...)
			}
			return servers, nil
		}
		lastErr = err
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return nil, fmt.Errorf("standin: starting %d servers on one port: %w", len(handlers), lastErr)
}

// GroupIP returns the address of the i-th server of a group (0-based).
func GroupIP(i int) string { return "127.0.0." + strconv.Itoa(i+2) }

// listenGroup opens n listeners on GroupIP(0..n-1) sharing one port.
func listenGroup(n int) ([]net.Listener, error) {
	first, err := net.Listen("tcp", net.JoinHostPort(GroupIP(0), "0"))
	if err != nil {
		return nil, err
	}
	lis := []net.Listener{first}
	port := strconv.Itoa(first.Addr().(*net.TCPAddr).Port)
	for i := 1; i < n; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(GroupIP(i), port))
		if err != nil {
			for _, l := range lis {
				_ = l.Close()
			}
			return nil, err
		}
		lis = append(lis, l)
	}
	return lis, nil
}
