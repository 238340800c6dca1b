package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat; it is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// procTree returns pid and all its descendants.
func procTree(root int) []int {
	parent := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			parent[pid] = st.ppid
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

type procStat struct {
	ppid         int
	utime, stime uint64
}

// readStat parses /proc/PID/stat (the command name may hold spaces and
// parentheses, so fields are counted from the last ')').
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed stat for %d", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("short stat for %d", pid)
	}
	var st procStat
	st.ppid, _ = strconv.Atoi(f[1])
	st.utime, _ = strconv.ParseUint(f[11], 10, 64)
	st.stime, _ = strconv.ParseUint(f[12], 10, 64)
	return st, nil
}

// treeCPUSeconds is utime+stime of pid and its descendants, in seconds.
func treeCPUSeconds(root int) float64 {
	var ticks uint64
	for _, pid := range procTree(root) {
		if st, err := readStat(pid); err == nil {
			ticks += st.utime + st.stime
		}
	}
	return float64(ticks) / clockTicks
}

// treePeakRSSKiB is the sum of VmHWM over pid and its descendants (for nginx:
// master plus worker; pages they share count twice).
func treePeakRSSKiB(root int) int64 { return treeStatusKiB(root, "VmHWM:") }

// treeStatusKiB sums a kB field of /proc/PID/status over the tree.
func treeStatusKiB(root int, field string) int64 {
	var sum int64
	for _, pid := range procTree(root) {
		sum += statusField(pid, field)
	}
	return sum
}

// statusField reads a "kB" field of /proc/PID/status.
func statusField(pid int, name string) int64 {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name) {
			v := strings.Fields(strings.TrimPrefix(line, name))
			if len(v) > 0 {
				n, _ := strconv.ParseInt(v[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// cpuTimes reads the per-CPU busy and total jiffies from /proc/stat.
func cpuTimes() map[string][2]uint64 {
	out := map[string][2]uint64{}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var total, idle uint64
		for i, v := range f[1:] {
			n, _ := strconv.ParseUint(v, 10, 64)
			if i >= 8 { // guest times are already in user/nice
				break
			}
			total += n
			if i == 3 || i == 4 { // idle, iowait
				idle += n
			}
		}
		out[f[0]] = [2]uint64{total - idle, total}
	}
	return out
}

// busyPct is the busy share of a CPU between two cpuTimes snapshots.
func busyPct(before, after map[string][2]uint64, cpu string) float64 {
	b, a := before[cpu], after[cpu]
	if a[1] <= b[1] {
		return 0
	}
	return 100 * float64(a[0]-b[0]) / float64(a[1]-b[1])
}

// loadAvg returns the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return strings.TrimSpace(string(b))
	}
	return strings.Join(f[:3], " ")
}
