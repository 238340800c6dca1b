//go:build !unix

package grpcpush

import "time"

// processCPU is not measured here: BenchmarkPolicyCPU reports no cpu-ns/op.
func processCPU() (time.Duration, bool) { return 0, false }
