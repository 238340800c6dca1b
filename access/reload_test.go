package access

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const fastInterval = 5 * time.Millisecond

// filePolicy is a policy file granting team-f to the given tokens.
func filePolicy(tokens ...string) string {
	var b strings.Builder
	b.WriteString("policies:\n  - name: file-policy\n    tenants: [team-f]\n    scopes: [metrics:write]\n    tokens:\n")
	for _, tok := range tokens {
		fmt.Fprintf(&b, "      - hash: %s\n", HashToken(tok))
	}
	return b.String()
}

// waitChecks waits until the guard has checked its file n more times.
func waitChecks(t *testing.T, g *Guard, n int64) {
	t.Helper()
	target := g.checks.Load() + n
	standin.WaitFor(t, 10*time.Second, "file checks", func() bool { return g.checks.Load() >= target })
}

func allowed(g *Guard, token string) bool {
	return g.Decide(basicReq("team-f", token), ScopeMetricsWrite).Allowed()
}

func TestFileReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policies.yaml")
	standin.ReplaceFile(t, path, filePolicy("file-1"))
	core, logs := observer.New(zapcore.InfoLevel)
	g := newTestGuard(t, Config{Policies: decisionConfig().Policies, File: path},
		Options{Logger: zap.New(core), FileCheckInterval: fastInterval})

	if !allowed(g, "file-1") || allowed(g, "file-2") {
		t.Fatal("initial policies")
	}
	if !g.Decide(basicReq("team-a", "token-a"), ScopeMetricsWrite).Allowed() {
		t.Fatal("inline policy")
	}
	loaded := g.Status().LastLoad

	// A token added.
	standin.ReplaceFile(t, path, filePolicy("file-1", "file-2"))
	standin.WaitFor(t, 10*time.Second, "the new token", func() bool { return allowed(g, "file-2") })
	if !allowed(g, "file-1") {
		t.Fatal("old token lost")
	}
	if st := g.Status(); st.LastLoad.Before(loaded) || st.LastError != "" {
		t.Fatalf("%+v", st)
	}

	// A token removed.
	standin.ReplaceFile(t, path, filePolicy("file-2"))
	standin.WaitFor(t, 10*time.Second, "the removed token to stop working", func() bool { return !allowed(g, "file-1") })

	// A broken file: the policies stay, the error shows, logged once.
	standin.ReplaceFile(t, path, "policies:\n  - name: file-policy\n    tenants: [team-f]\n    scopes: [metrics:wrte]\n    tokens:\n      - hash: "+HashToken("file-3")+"\n")
	standin.WaitFor(t, 10*time.Second, "the error", func() bool { return g.Status().LastError != "" })
	st := g.Status()
	if !strings.Contains(st.LastError, `unknown scope "metrics:wrte"`) || !strings.Contains(st.LastError, path) {
		t.Fatalf("last error %q", st.LastError)
	}
	waitChecks(t, g, 5)
	if !allowed(g, "file-2") || allowed(g, "file-3") {
		t.Fatal("a broken file changed the policies")
	}
	if n := logs.FilterMessage("access policy file not loaded; the policies in force stay").Len(); n != 1 {
		t.Fatalf("error logged %d times", n)
	}

	// A different error is logged again.
	standin.ReplaceFile(t, path, "policies: [")
	standin.WaitFor(t, 10*time.Second, "the second error", func() bool { return strings.Contains(g.Status().LastError, "yaml") })
	waitChecks(t, g, 3)
	if n := logs.FilterMessage("access policy file not loaded; the policies in force stay").Len(); n != 2 {
		t.Fatalf("errors logged %d times", n)
	}

	// The file disappears: same.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	standin.WaitFor(t, 10*time.Second, "the missing-file error", func() bool { return strings.Contains(g.Status().LastError, "no such file") })
	if !allowed(g, "file-2") {
		t.Fatal("a missing file changed the policies")
	}

	// Fixed: in force, error cleared.
	standin.ReplaceFile(t, path, filePolicy("file-3"))
	standin.WaitFor(t, 10*time.Second, "the fixed file", func() bool { return allowed(g, "file-3") })
	if allowed(g, "file-2") || g.Status().LastError != "" {
		t.Fatal("fixed file not in force")
	}

	// The status lists sources and never a hash.
	st = g.Status()
	last := st.Policies[len(st.Policies)-1]
	if last.Name != "file-policy" || last.Source != SourceFile || len(last.Tokens) != 1 || st.Policies[0].Source != SourceInline {
		t.Fatalf("%+v", st)
	}
	b, _ := json.Marshal(st)
	for _, tok := range []string{"file-1", "file-2", "file-3", "token-a", "token-b", "token-c"} {
		if strings.Contains(string(b), HashToken(tok)[7:20]) {
			t.Fatalf("status has a hash: %s", b)
		}
	}
	for _, e := range logs.All() {
		line := e.Message + fmt.Sprint(e.ContextMap())
		for _, tok := range []string{"file-1", "file-2", "file-3"} {
			if strings.Contains(line, HashToken(tok)[7:20]) {
				t.Fatalf("log has a hash: %s", line)
			}
		}
	}
}

func TestFileReloadUniqueAcrossInline(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policies.yaml")
	standin.ReplaceFile(t, path, filePolicy("file-1"))
	g := newTestGuard(t, Config{Policies: decisionConfig().Policies, File: path}, Options{FileCheckInterval: fastInterval})
	// The file takes a hash an inline policy has: refused.
	standin.ReplaceFile(t, path, filePolicy("token-a"))
	standin.WaitFor(t, 10*time.Second, "the error", func() bool { return g.Status().LastError != "" })
	if !strings.Contains(g.Status().LastError, "the same hash is already used by access_policies.policies[0] (team-a).tokens[0]") {
		t.Fatal(g.Status().LastError)
	}
	if !allowed(g, "file-1") {
		t.Fatal("policies changed")
	}
}

// Kubernetes updates a Secret volume by writing a new directory and swapping
// the ..data symlink; the file itself is a symlink through ..data.
func TestFileReloadSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	write := func(version, content string) {
		d := filepath.Join(dir, version)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		standin.ReplaceFile(t, filepath.Join(d, "policies.yaml"), content)
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	write("..2026_06_01_00_00_00.1", filePolicy("file-1"))
	path := filepath.Join(dir, "policies.yaml")
	if err := os.Symlink("..data/policies.yaml", path); err != nil {
		t.Fatal(err)
	}
	g := newTestGuard(t, Config{File: path}, Options{FileCheckInterval: fastInterval})
	if !allowed(g, "file-1") {
		t.Fatal("initial")
	}
	write("..2026_06_01_00_01_00.2", filePolicy("file-2"))
	standin.WaitFor(t, 10*time.Second, "the swapped file", func() bool { return allowed(g, "file-2") })
	if allowed(g, "file-1") {
		t.Fatal("old token still works")
	}
}

func TestNewFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := New(Config{File: filepath.Join(dir, "missing.yaml")}, Options{}); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("missing file: %v", err)
	}
	path := filepath.Join(dir, "p.yaml")
	standin.ReplaceFile(t, path, "policies:\n  - name: x\n    tenants: [x]\n    scopes: [nope]\n")
	if _, err := New(Config{File: path}, Options{}); err == nil || !strings.Contains(err.Error(), `unknown scope (not shown`) {
		t.Fatalf("invalid file: %v", err)
	}
	if _, err := New(Config{Realm: `"`}, Options{}); err == nil {
		t.Fatal("invalid config accepted")
	}
	if _, err := New(Config{}, Options{FileCheckInterval: 11 * time.Second}); err == nil {
		t.Fatal("interval over 10 s accepted")
	}
}

func TestCloseIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.yaml")
	standin.ReplaceFile(t, path, filePolicy("file-1"))
	g, err := New(Config{File: path}, Options{FileCheckInterval: fastInterval})
	if err != nil {
		t.Fatal(err)
	}
	waitChecks(t, g, 1)
	g.Close()
	g.Close()
	// The watcher has stopped: no more checks.
	n := g.checks.Load()
	select {
	case <-g.done:
	default:
		t.Fatal("watcher still running")
	}
	if g.checks.Load() != n {
		t.Fatal("checks after Close")
	}
	// Decisions still work.
	if !allowed(g, "file-1") {
		t.Fatal("decision after Close")
	}
}
