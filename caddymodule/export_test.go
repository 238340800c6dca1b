package caddymodule

// PooledGRPCUpstreams counts the gRPC upstreams (one ClientConn each) in the
// usage pool, for leak tests.
func PooledGRPCUpstreams() int {
	n := 0
	grpcUpstreams.Range(func(any, any) bool { n++; return true })
	return n
}

// LiveGateways counts the provisioned, not yet cleaned up gateways.
func LiveGateways() int {
	n := 0
	live.Range(func(any, any) bool { n++; return true })
	return n
}

// Rows returns the table a Routes was built from.
func (rs *Routes) Rows() []Route { return rs.rows }
