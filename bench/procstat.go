package main

import (
	"fmt"
	"sync"

	"github.com/prometheus/procfs"
)

// procFS is /proc, opened once.
var procFS = sync.OnceValues(procfs.NewDefaultFS)

// procTree returns pid and all its descendants.
func procTree(root int) []int {
	parent := map[int]int{}
	fs, err := procFS()
	if err != nil {
		return []int{root}
	}
	procs, _ := fs.AllProcs()
	for _, p := range procs {
		if st, err := p.Stat(); err == nil {
			parent[p.PID] = st.PPID
		}
	}
	tree := []int{root}
	in := map[int]bool{root: true}
	for changed := true; changed; {
		changed = false
		for pid, pp := range parent {
			if in[pp] && !in[pid] {
				in[pid] = true
				tree = append(tree, pid)
				changed = true
			}
		}
	}
	return tree
}

// procStat is what the bench reads of /proc/PID/stat.
type procStat struct {
	ppid       int
	cpuSeconds float64 // utime + stime
}

func readStat(pid int) (procStat, error) {
	fs, err := procFS()
	if err != nil {
		return procStat{}, err
	}
	p, err := fs.Proc(pid)
	if err != nil {
		return procStat{}, err
	}
	st, err := p.Stat()
	if err != nil {
		return procStat{}, err
	}
	return procStat{ppid: st.PPID, cpuSeconds: st.CPUTime()}, nil
}

// treeCPUSeconds is utime+stime of pid and its descendants, in seconds.
func treeCPUSeconds(root int) float64 {
	var sum float64
	for _, pid := range procTree(root) {
		if st, err := readStat(pid); err == nil {
			sum += st.cpuSeconds
		}
	}
	return sum
}

// memKiB is what the bench reads of /proc/PID/status, in KiB.
type memKiB struct {
	peak int64 // VmHWM, the peak RSS
	rss  int64 // VmRSS
	anon int64 // RssAnon: heap, stacks
	file int64 // RssFile: mapped files, the binary among them
}

// treeMemKiB sums memKiB over pid and its descendants (for nginx: master
// plus worker; pages they share count twice).
func treeMemKiB(root int) memKiB {
	var sum memKiB
	for _, pid := range procTree(root) {
		m := readMemKiB(pid)
		sum.peak += m.peak
		sum.rss += m.rss
		sum.anon += m.anon
		sum.file += m.file
	}
	return sum
}

// readMemKiB reads one process's memKiB (zero if it is gone).
func readMemKiB(pid int) memKiB {
	fs, err := procFS()
	if err != nil {
		return memKiB{}
	}
	p, err := fs.Proc(pid)
	if err != nil {
		return memKiB{}
	}
	st, err := p.NewStatus()
	if err != nil {
		return memKiB{}
	}
	kib := func(bytes uint64) int64 { return int64(bytes / 1024) }
	return memKiB{peak: kib(st.VmHWM), rss: kib(st.VmRSS), anon: kib(st.RssAnon), file: kib(st.RssFile)}
}

// cpuTimes reads each CPU's busy and total time, in seconds, from /proc/stat.
func cpuTimes() map[int64][2]float64 {
	out := map[int64][2]float64{}
	fs, err := procFS()
	if err != nil {
		return out
	}
	st, err := fs.Stat()
	if err != nil {
		return out
	}
	for cpu, t := range st.CPU {
		// Guest times are already in user and nice; idle and iowait are not busy.
		idle := t.Idle + t.Iowait
		total := t.User + t.Nice + t.System + idle + t.IRQ + t.SoftIRQ + t.Steal
		out[cpu] = [2]float64{total - idle, total}
	}
	return out
}

// busyPct is the busy share of a CPU between two cpuTimes snapshots.
func busyPct(before, after map[int64][2]float64, cpu int) float64 {
	b, a := before[int64(cpu)], after[int64(cpu)]
	if a[1] <= b[1] {
		return 0
	}
	// Clamped: the float sums of /proc/stat's fields can differ in the
	// last bits (an idle CPU read as -3e-09 % busy).
	return min(100, max(0, 100*(a[0]-b[0])/(a[1]-b[1])))
}

// loadAvg returns the 1, 5 and 15 minute load averages as /proc/loadavg
// writes them.
func loadAvg() string {
	fs, err := procFS()
	if err != nil {
		return "?"
	}
	l, err := fs.LoadAvg()
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%.2f %.2f %.2f", l.Load1, l.Load5, l.Load15)
}
