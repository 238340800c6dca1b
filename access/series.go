package access

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// policySeries counts, by counter vector and policy name, the Guards whose
// policies in force have the name, so that a policy's series go when the
// last Guard that has it drops it (a reload, or a policy file that no
// longer lists it): policy churn does not grow the exported series. The
// labels "" and "+" are no policy's and stay.
var policySeries = struct {
	mu    sync.Mutex
	users map[seriesKey]int
}{users: map[seriesKey]int{}}

type seriesKey struct {
	vec  *prometheus.CounterVec
	name string
}

// trackPolicies records that a Guard's policies in force went from old to
// next (nil: none) and deletes the series of the names no Guard has now.
func trackPolicies(vec *prometheus.CounterVec, old, next *snapshot) {
	if vec == nil {
		return
	}
	policySeries.mu.Lock()
	defer policySeries.mu.Unlock()
	if next != nil {
		for name := range next.byName {
			if old == nil || old.byName[name] == nil {
				policySeries.users[seriesKey{vec, name}]++
			}
		}
	}
	if old == nil {
		return
	}
	for name := range old.byName {
		if next != nil && next.byName[name] != nil {
			continue
		}
		k := seriesKey{vec, name}
		if policySeries.users[k]--; policySeries.users[k] <= 0 {
			delete(policySeries.users, k)
			for _, result := range resultNames {
				vec.DeleteLabelValues(name, result)
			}
		}
	}
}
