package grpcpush

// printableTenant reports whether a tenant can travel in gRPC metadata: the
// values of non-binary metadata keys are printable ASCII only (grpc-go fails
// the call with INTERNAL otherwise). HTTP allows more in a header value
// (tabs, bytes ≥ 0x80), but no valid Mimir tenant ID uses them.
func printableTenant(tenant string) bool {
	for i := 0; i < len(tenant); i++ {
		if c := tenant[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}
