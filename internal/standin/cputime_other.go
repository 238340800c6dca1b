//go:build !unix

package standin

import "time"

// ProcessCPU is not measured here: CPU benchmarks report no cpu-ns/op.
func ProcessCPU() (time.Duration, bool) { return 0, false }
