package caddymodule

// BackendStatus describes one configured backend for the admin API.
type BackendStatus struct {
	Component Component   `json:"component"`
	Kind      BackendKind `json:"kind"`
	Target    string      `json:"target"`
	// Endpoints are the resolved endpoints of a gRPC backend.
	Endpoints []EndpointStatus `json:"endpoints,omitempty"`
}

// EndpointStatus is one endpoint of a gRPC backend.
type EndpointStatus struct {
	Address  string `json:"address"`
	State    string `json:"state"`
	Requests uint64 `json:"requests"`
}
