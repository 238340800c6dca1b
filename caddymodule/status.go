package caddymodule

import "github.com/metrics-gateway/metrics_gateway/grpcpush"

// BackendStatus describes one configured backend for the admin API.
type BackendStatus struct {
	Component Component   `json:"component"`
	Kind      BackendKind `json:"kind"`
	Target    string      `json:"target"`
	// Endpoints are the resolved endpoints of a gRPC backend, of all its
	// targets.
	Endpoints []EndpointStatus `json:"endpoints,omitempty"`
	// Groups are a gRPC backend's targets (priority groups) in order, each
	// with its endpoints; Serving marks the one requests go to now.
	Groups []GroupStatus `json:"groups,omitempty"`
	// BufferedBytes are the request body bytes a gRPC backend holds now,
	// of at most MaxBufferedBytes.
	BufferedBytes    int64 `json:"buffered_bytes,omitempty"`
	MaxBufferedBytes int64 `json:"max_buffered_bytes,omitempty"`
	// InFlight are a mirror's copies in flight.
	InFlight int `json:"in_flight,omitempty"`
}

// GroupStatus is one target (priority group) of a gRPC backend.
type GroupStatus struct {
	Target  string `json:"target"`
	Serving bool   `json:"serving"`
	// Ready counts the endpoints that can take a call: READY and, with
	// passive health checks, in.
	Ready     int              `json:"ready"`
	Endpoints []EndpointStatus `json:"endpoints"`
}

// EndpointStatus is one endpoint of a gRPC backend: its address, gRPC
// connectivity state, calls, and passive health.
type EndpointStatus = grpcpush.EndpointStatus
