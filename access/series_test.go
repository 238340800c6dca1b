package access

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// TestPolicySeriesFollowThePolicies: a policy's series stay while some
// Guard sharing the counter has the policy in force, and go when the last
// one drops it, by a file change or by closing (a reload).
func TestPolicySeriesFollowThePolicies(t *testing.T) {
	vec := NewRequestsCounter()
	path := filepath.Join(t.TempDir(), "policies.yaml")
	standin.ReplaceFile(t, path, filePolicy("file-1"))
	withFile := newTestGuard(t, Config{Policies: decisionConfig().Policies[:1], File: path},
		Options{Metrics: vec, FileCheckInterval: fastInterval})
	// Another configuration (a second site) with file-policy inline.
	inline, err := New(Config{Policies: []Policy{{Name: "file-policy", Tenants: []string{"team-f"},
		Scopes: []string{"metrics:write"}, Tokens: []Token{{Hash: HashToken("inline-1")}}}}},
		Options{Metrics: vec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inline.Close() })
	series := func(policy string) int { return seriesOf(vec, policy) }

	if !allowed(withFile, "file-1") || !allowed(inline, "inline-1") || allowed(withFile, "nope") {
		t.Fatal("initial policies")
	}
	if !withFile.Decide(basicReq("team-a", "token-a"), ScopeMetricsWrite).Allowed() {
		t.Fatal("inline policy team-a")
	}
	if series("file-policy") == 0 || series("team-a") == 0 || series("") == 0 {
		t.Fatalf("series of file-policy %d, team-a %d, none %d: want some of each", series("file-policy"), series("team-a"), series(""))
	}

	// The file drops file-policy: the other configuration still has it.
	standin.ReplaceFile(t, path, "policies: []\n")
	standin.WaitFor(t, 10*time.Second, "the file's policy gone", func() bool { return !allowed(withFile, "file-1") })
	if series("file-policy") == 0 {
		t.Fatal("file-policy's series went while another configuration has the policy")
	}
	// The other configuration goes (a reload): nobody has it now.
	_ = inline.Close()
	if n := series("file-policy"); n != 0 {
		t.Fatalf("%d series of file-policy after every configuration dropped it", n)
	}
	if series("team-a") == 0 || series("") == 0 {
		t.Fatal("a policy still in force lost its series")
	}
	_ = withFile.Close()
	if n := series("team-a"); n != 0 {
		t.Fatalf("%d series of team-a after its configuration closed", n)
	}
	if series("") == 0 {
		t.Fatal(`the series of policy "" (no credential matched) went`)
	}
}

// seriesOf counts vec's series of one policy label.
func seriesOf(vec *prometheus.CounterVec, policy string) int {
	n := 0
	ch := make(chan prometheus.Metric, 64)
	go func() { vec.Collect(ch); close(ch) }()
	for m := range ch {
		var out dto.Metric
		_ = m.Write(&out)
		for _, l := range out.GetLabel() {
			if l.GetName() == "policy" && l.GetValue() == policy {
				n++
			}
		}
	}
	return n
}
