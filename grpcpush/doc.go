// Package grpcpush is the gateway's upstream for dns: backends: an
// http.Handler that tunnels every HTTP request it receives to one endpoint of
// a Mimir/Cortex component over gRPC, spreading requests round-robin over all
// endpoints the target resolves to. It knows gRPC and HTTP only (no Caddy):
// options in, an http.Handler plus Close out.
//
// # Why
//
// Remote-write clients keep one connection for hours. Behind a Kubernetes
// Service each client sticks to one distributor and load goes uneven. Here
// every A/AAAA record of the target is an endpoint with a persistent HTTP/2
// connection, and EACH request goes to the next endpoint (grpc-go's
// round_robin), so load is spread per request whatever the clients do.
//
// # Wire protocol
//
// One unary call /httpgrpc.HTTP/Handle per request, carrying dskit's
// httpgrpc.HTTPRequest{Method, Url (request URI: path and query), Headers,
// Body} and answered by httpgrpc.HTTPResponse{Code, Headers, Body}: every
// Mimir and Cortex component serves it on its gRPC port, so push, OTLP,
// Influx, Remote-Write 2.0 and the /distributor pages all work. Hop-by-hop
// headers (Connection and the headers it lists, Keep-Alive, TE, Trailer,
// Transfer-Encoding, Upgrade, Proxy-*) are dropped both ways; Host is
// added as a header (net/http keeps it out of r.Header).
// Options.ReplaceHeaders lets the caller put its own values in place of the
// client's for some headers: the Caddy module sends X-Forwarded-For/-Proto/
// -Host and Via there exactly as Caddy's reverse_proxy computes them.
//
// The tenant (X-Scope-OrgID header) goes into gRPC metadata x-scope-orgid
// (exactly one value, as dskit requires) and stays in the tunnelled headers,
// which Mimir's HTTP handlers read. A request without it gets 401 "no org id"
// and no call is made. "a|b" (federation) passes through as is.
//
// The body is read once into a pooled buffer (413 beyond MaxRequestBody,
// before any call; 408 when it has not arrived when the timeout, counted
// from the start of the request, passes). A small codec (grpc.ForceCodecV2, for this ClientConn
// only) encodes method, URL and headers with dskit's generated code into
// headroom reserved in front of the body, so the gRPC message is that same
// buffer: the body is not copied inside the gateway. The buffer returns to
// the pool when gRPC drops its last reference, which can be after the
// request finished.
//
// # Discovery and balancing
//
// Target forms: dns:///host:port (system resolver), dns://authority/host:port
// (ask the DNS server at authority, RFC 4501; port 53 if omitted) and
// dns:///ip:port (one fixed endpoint). A resolver local to this ClientConn
// (grpc.WithResolvers; grpc-go's global "dns" resolver is untouched) looks up
// A and AAAA every Refresh and when gRPC asks (ResolveNow, at most once a
// second). A failed or empty lookup keeps the last good endpoints (logged as
// a warning); before the first good answer the error is reported to gRPC, so
// calls fail with 503 instead of waiting. Endpoint-set changes are logged at
// info. A removed endpoint gets no new calls once the new set is reported;
// its in-flight calls finish.
//
// Balancing is grpc-go's round_robin (Options.LBPolicy "round_robin", the
// default) or least_request ("least_conn": of two READY endpoints picked at
// random, the one with fewer calls in flight), each wrapped by a thin
// observer balancer (registered as "metrics_gateway_round_robin" and
// "metrics_gateway_least_conn") that records each endpoint's connectivity
// state and calls, for Endpoints, the metrics and OnDone.
//
// Passive health checks (Options.FailDuration > 0, health.go) watch every
// call: UNAVAILABLE, DEADLINE_EXCEEDED, a status in UnhealthyStatus or a
// call slower than UnhealthyLatency is a failure (the last only if another
// endpoint answered in time while it was overdue, or the others were idle);
// MaxFails failures within FailDuration take the endpoint out until they
// age out. An endpoint that is out reports TRANSIENT_FAILURE through gRPC's
// health listener to its pick_first child, so the policy leaves it out of
// its picker (as grpc-go's outlier detection does) while its connection
// stays up; if every READY endpoint is out, none is left out. Changes are
// logged at info and shown by Endpoints and
// metrics_gateway_grpc_endpoint_healthy.
//
// The channel never goes idle, connects at New, and uses dskit's
// client settings: keepalive 20s/10s with pings allowed without calls,
// reconnect backoff 1s-5s.
//
// # Retries, timeouts, cancellation
//
// A call failing with UNAVAILABLE before the endpoint answered (connection
// refused or reset, endpoint killed, GOAWAY) is retried up to Retries times
// (0-4, default 2) by grpc-go's retry policy from the service config; gRPC
// picks the next endpoint for each attempt. Nothing else is retried. grpc-go
// keeps a call for retries only up to MaxRetryRPCBufferSize (default 256
// KiB, above which it silently stops retrying); it is raised to the message
// limit here, which costs nothing extra because the retained message is the
// request buffer itself. Each request gets Timeout from its start, body
// upload included (504 past it); a client that disconnects cancels the call,
// and the endpoint sees the cancellation. Answers are limited to
// MaxResponseBody (default 100 MiB, Mimir's send limit); a larger one is the
// backend's failure: 502.
//
// # Error mapping
//
// What the HTTP client gets for a call's result, first match wins:
//
//	OK                                           the HTTPResponse: code, headers, body
//	a status with an httpgrpc.HTTPResponse detail that response verbatim (Mimir returns 4xx and 5xx so)
//	a status with a cortexpb.ErrorDetails detail by cause: BAD_DATA, TENANT_LIMIT, TOO_MANY_CLUSTERS 400;
//	                                             INGESTION_RATE_LIMITED, REQUEST_RATE_LIMITED,
//	                                             ACTIVE_SERIES_LIMITED 429; REPLICAS_DID_NOT_MATCH 202;
//	                                             CIRCUIT_BREAKER_OPEN, INSTANCE_LIMIT, TSDB_UNAVAILABLE 503;
//	                                             METHOD_NOT_ALLOWED 501; other causes 500
//	code 200-599 without detail (Cortex)          that number (100-199: 502, see below)
//	Unavailable (after retries)                  503
//	DeadlineExceeded                             504
//	Canceled                                     499; nothing is written when the client is gone
//	ResourceExhausted, this side's receive limit 502 (answer larger than MaxResponseBody)
//	ResourceExhausted "larger than max"          413; other ResourceExhausted 429
//	Unknown "no org id"                          401
//	InvalidArgument, FailedPrecondition, OutOfRange  400
//	Unauthenticated 401, PermissionDenied 403, NotFound 404, Unimplemented 501, AlreadyExists 409
//	anything else                                500
//
// A call made after Close fails with 503 rather than 499. A 1xx code (in a code number or an HTTPResponse) cannot be relayed as a
// final answer (net/http sends 1xx as interim responses), so it becomes 502,
// as does any code outside 100-599 in a successful HTTPResponse.
//
// Gateway-made answers are text/plain, one line naming the backend (and the
// endpoint when one was picked) and what failed; 429 and 503 carry
// "Retry-After: 1". Handle returns them as *Error (status and line) instead
// of writing them, so that a caller can answer them its own way (the Caddy
// module hands them to Caddy's error routes); ServeHTTP writes them. The ErrorCause numbers are Mimir's wire values
// (pkg/mimirpb/mimir.proto, enum ErrorCause); ErrorDetails is decoded by hand
// because it is a gogo type that status.Details cannot decode.
//
// # Metrics and observability
//
// NewMetrics creates the collectors (the caller registers Collectors()):
// metrics_gateway_grpc_requests_total{backend,target,endpoint,code},
// metrics_gateway_grpc_request_duration_seconds{backend},
// metrics_gateway_grpc_requests_in_flight{backend},
// metrics_gateway_grpc_endpoints_ready{backend} and
// metrics_gateway_grpc_endpoint_healthy{backend,endpoint}. Label children are looked
// up once, so a request does no label lookups; the series of an endpoint
// that leaves the set are deleted once its last in-flight call is counted
// (a call holds a reference to its endpoint from Pick to its count). Endpoints reports each endpoint's state
// and call count for an admin view; Options.OnDone tells the caller which
// endpoint served a request (for access logs), Options.OnAnswer which one is
// answering, before anything is written (for response placeholders).
//
// # Priority groups
//
// Priority sends each request to the first of several Handlers (one per
// target, e.g. one per zone) that has at least MinReady READY and healthy
// endpoints (Handler.Serving counts them without a lock). A call that fails
// UNAVAILABLE once its Handler's retries are used up is made again, with
// the same call (the request message and its body buffer are not rebuilt),
// on each later Handler with a READY endpoint, within the same deadline;
// nothing has been written at that point. The metrics and OnDone count the
// request once, for the endpoint of the last attempt.
//
// # API choices
//
// Options.Retries is a *int so that 0 (no retries) differs from "default".
// Options.Compression accepts "" and "gzip". One Handler owns one
// ClientConn; sharing a Handler between configurations (reloads) is the
// caller's business, and Options.Key tells which Options may share one; it
// includes the TLS files' contents, so rotated certificates give another
// key. Options.Validate checks Options without reading files.
package grpcpush
