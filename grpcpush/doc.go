// Package grpcpush is the gateway's upstream for dns: backends: an
// http.Handler that tunnels every HTTP request it receives, as one unary
// /httpgrpc.HTTP/Handle call, to one endpoint of a Mimir or Cortex
// component, balancing each request over every address the target's name
// resolves to, on persistent HTTP/2 connections. It knows gRPC and HTTP
// only (no Caddy): Options in, a Handler (http.Handler, Handle, Close) out.
//
//	h, err := grpcpush.New(grpcpush.Options{Target: "dns:///distributor.mimir.svc:9095"})
//	defer h.Close()
//	http.Handle("/api/v1/push", h)
//
// Handle is ServeHTTP returning the gateway's own failures as *Error
// instead of writing them, for a caller that answers them its own way.
// Priority puts several Handlers (one per zone) in order as priority
// groups; a Budget bounds the request body bytes held by the requests that
// share it. NewMetrics makes the Prometheus collectors; Endpoints,
// Available and Priority.Current feed an admin view; Options.Key says which
// Options may share one Handler across configurations.
//
// The files: handler.go (the request path, Handler, Error), body.go and
// budget.go (reading bodies into pooled buffers, and their bound),
// request.go and codec.go (the call and its message, the body not copied),
// target.go and resolver.go (dns: targets, DNS), balancer.go and leastconn.go (the observer around
// grpc-go's balancers), health.go and latency.go (passive health checks),
// priority.go (priority groups), errors.go and response.go (what a client
// gets), retryafter.go, metrics.go, logging.go, readiness.go, options.go.
//
// The documentation is in the repository's docs directory, each thing said
// once: what a client gets for every result, one table checked against this
// package by TestErrorTableInDocs (docs/errors.md); balancing and passive
// health checks (docs/health.md); priority groups (docs/zones.md); how the
// path is built and why (docs/design.md); the path of one request function
// by function and what is shared across reloads (docs/ARCHITECTURE.md).
package grpcpush
