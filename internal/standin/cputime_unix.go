//go:build unix

package standin

import (
	"syscall"
	"time"
)

// ProcessCPU returns the user + system CPU this process has used so far.
func ProcessCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
