package caddyfile_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// This file keeps the documentation honest: every configuration block in
// README.md and docs/ adapts (or, for JSON, provisions), the README's quick
// start runs as written, the rows of the error table that the Caddy module
// answers hold, and every relative link and #anchor resolves.

// docFiles are the Markdown files whose configuration blocks are checked.
func docFiles(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) == 0 {
		t.Fatal("no docs/*.md files")
	}
	return append([]string{"../README.md"}, docs...)
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fencedBlock matches a fenced code block of one language in Markdown.
func fencedBlock(lang string) *regexp.Regexp {
	return regexp.MustCompile("(?ms)^```" + lang + "\n(.*?)^```")
}

// TestDocsSnippetsAdapt adapts every ```caddyfile block of README.md and
// docs/*.md as it is written there, so each one pastes into a Caddyfile and
// works.
func TestDocsSnippetsAdapt(t *testing.T) {
	total := 0
	for _, name := range docFiles(t) {
		blocks := fencedBlock("caddyfile").FindAllStringSubmatch(readFile(t, name), -1)
		if name == "../README.md" && len(blocks) == 0 {
			t.Error("README.md has no ```caddyfile blocks")
		}
		for i, b := range blocks {
			total++
			if _, err := adapt(t, b[1]); err != nil {
				t.Errorf("%s: caddyfile block %d does not adapt: %v\n%s", name, i+1, err, b[1])
			}
		}
	}
	t.Logf("%d caddyfile blocks adapted", total)
}

// TestDocsJSONBlocks parses every ```json block of README.md and docs/*.md,
// and loads each metrics_gateway handler among them into a real Caddy, which
// provisions it as `caddy run` would.
func TestDocsJSONBlocks(t *testing.T) {
	for _, name := range docFiles(t) {
		for i, b := range fencedBlock("json").FindAllStringSubmatch(readFile(t, name), -1) {
			var v any
			if err := json.Unmarshal([]byte(b[1]), &v); err != nil {
				t.Errorf("%s: json block %d is not JSON: %v\n%s", name, i+1, err, b[1])
				continue
			}
			if h, ok := v.(map[string]any); !ok || h["handler"] != "metrics_gateway" {
				continue // an answer or a listing, not a configuration
			}
			t.Run(fmt.Sprintf("%s#%d", filepath.Base(name), i+1), func(t *testing.T) {
				c := testcaddy.Start(t, "["+b[1]+"]")
				if resp, body, err := c.Get("/ready"); err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("GET /ready: %v %v %q", resp, err, body)
				}
			})
		}
	}
}

// Markers of the README's quick start.
const quickStartBegin, quickStartEnd = "<!-- quick start: begin -->", "<!-- quick start: end -->"

// quickStart returns the Caddyfile of the README's quick start.
func quickStart(t *testing.T) string {
	t.Helper()
	readme := readFile(t, "../README.md")
	i, j := strings.Index(readme, quickStartBegin), strings.Index(readme, quickStartEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %s ... %s section", quickStartBegin, quickStartEnd)
	}
	blocks := fencedBlock("caddyfile").FindAllStringSubmatch(readme[i:j], -1)
	if len(blocks) != 1 {
		t.Fatalf("the quick start has %d caddyfile blocks, want 1", len(blocks))
	}
	block := blocks[0][1]
	if n := strings.Count(block, "\n"); n > 15 {
		t.Errorf("the quick start's Caddyfile has %d lines, want at most 15", n)
	}
	return block
}

// The environment variables the quick start reads, with defaults.
const envHTTP, envDistributors = "MIMIR_HTTP", "MIMIR_DISTRIBUTORS"

// unsetenv removes an environment variable for the rest of the test:
// `{$VAR:default}` takes the default only when VAR is not set at all.
func unsetenv(t *testing.T, key string) {
	t.Setenv(key, "") // restores the old value when the test ends
	if err := os.Unsetenv(key); err != nil {
		t.Fatal(err)
	}
}

// TestReadmeQuickStart runs the README's quick-start Caddyfile in a real
// Caddy (its listener moved to a unix socket), first as copied, then with
// its two environment variables pointing at stand-ins for Mimir.
func TestReadmeQuickStart(t *testing.T) {
	block := quickStart(t)
	for _, env := range []string{envHTTP, envDistributors} {
		if !strings.Contains(block, "{$"+env+":") {
			t.Errorf("the quick start does not read {$%s:...}", env)
		}
	}

	t.Run("plain HTTP", func(t *testing.T) {
		// An http:// site address: Caddy serves plain HTTP, with no
		// certificate, no TLS app and no redirect listener.
		unsetenv(t, envHTTP)
		unsetenv(t, envDistributors)
		out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(block), map[string]any{"filename": "Caddyfile"})
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range warnings { // what `caddy run` would print first
			t.Errorf("the quick start adapts with a warning: %s", w)
		}
		var cfg struct {
			Apps struct {
				TLS  json.RawMessage `json:"tls"`
				HTTP struct {
					Servers map[string]struct {
						Listen   []string        `json:"listen"`
						Policies json.RawMessage `json:"tls_connection_policies"`
					} `json:"servers"`
				} `json:"http"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.Apps.TLS != nil || len(cfg.Apps.HTTP.Servers) != 1 {
			t.Fatalf("adapted quick start has a TLS app or several servers:\n%s", out)
		}
		for _, srv := range cfg.Apps.HTTP.Servers {
			if srv.Policies != nil || len(srv.Listen) != 1 || srv.Listen[0] != ":8000" {
				t.Fatalf("adapted quick start: want plain HTTP on :8000, got %s", out)
			}
		}
	})

	t.Run("as copied", func(t *testing.T) {
		unsetenv(t, envHTTP)
		unsetenv(t, envDistributors)
		c := testcaddy.StartCaddyfile(t, block)
		for path, want := range map[string]string{"/": "OK", "/ready": "ready"} {
			resp, body, err := c.Get(path)
			if err != nil || resp.StatusCode != http.StatusOK || string(body) != want {
				t.Errorf("GET %s: %v %v %q, want 200 %q", path, resp, err, body, want)
			}
		}
		// Nothing of Mimir here: the push fails with a line that names the
		// backend, unless something listens where the defaults point.
		for _, addr := range []string{"127.0.0.1:9095", "127.0.0.1:8080"} { // where the lines below say the push went
			if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				conn.Close()
				t.Skipf("something listens on %s, where the quick start's defaults point", addr)
			}
		}
		resp, body, err := c.Do(pushRequest(t, ""))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("push without a Mimir: %d %s", resp.StatusCode, body)
		if resp.StatusCode < 500 || !strings.HasPrefix(string(body), "distributor") {
			t.Errorf("push: %d %q, want a 5xx naming the distributor", resp.StatusCode, body)
		}
		// The README shows the line a client gets here.
		line := fmt.Sprintf("`%d %s`", resp.StatusCode, strings.TrimSpace(string(body)))
		if !strings.Contains(line, "dial tcp 127.0.0.1:9095: connect: connection refused") {
			t.Errorf("a push without a Mimir: %s, want a refused connection to 127.0.0.1:9095", line)
		} else if !strings.Contains(readFile(t, "../README.md"), line) {
			t.Errorf("README.md does not show the line a push gets without a Mimir: %s", line)
		}
		// And docs/errors.md the line of an HTTP backend that refuses.
		resp, body, err = c.Get("/prometheus/api/v1/query?query=up")
		if err != nil {
			t.Fatal(err)
		}
		line = fmt.Sprintf("`%d %s`", resp.StatusCode, strings.TrimSpace(string(body)))
		if !strings.Contains(line, "dial tcp 127.0.0.1:8080: connect: connection refused") {
			t.Errorf("a query without a Mimir: %s, want a refused connection to 127.0.0.1:8080", line)
		} else if !strings.Contains(readFile(t, "../docs/errors.md"), line) {
			t.Errorf("docs/errors.md does not show the line a query gets without a Mimir: %s", line)
		}
	})

	t.Run("with stand-ins", func(t *testing.T) {
		cluster, err := standin.StartCluster("distributor.mimir.test", 2)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cluster.Stop)
		tenants := make(chan string, 1)
		for _, d := range cluster.Distributors {
			d.SetBehavior(func(_ http.ResponseWriter, r *http.Request) bool {
				select {
				case tenants <- r.Header.Get("X-Scope-OrgID"):
				default:
				}
				return false
			})
		}
		mimir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "mimir over HTTP: %s %s", r.URL.Path, r.Header.Get("X-Scope-OrgID"))
		}))
		t.Cleanup(mimir.Close)
		t.Setenv(envHTTP, mimir.URL)
		t.Setenv(envDistributors, cluster.Target())
		c := testcaddy.StartCaddyfile(t, block)

		resp, body, err := c.Do(pushRequest(t, ""))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("push: %v %v %q", resp, err, body)
		}
		if got := <-tenants; got != "anonymous" {
			t.Errorf("the distributor saw tenant %q, want default_tenant anonymous", got)
		}
		resp, body, err = c.Get("/prometheus/api/v1/query?query=up")
		if err != nil || resp.StatusCode != http.StatusOK || string(body) != "mimir over HTTP: /prometheus/api/v1/query anonymous" {
			t.Errorf("query: %v %v %q", resp, err, body)
		}
	})
}

// pushRequest is a Remote-Write push, with tenant as X-Scope-OrgID unless
// it is empty.
func pushRequest(t *testing.T, tenant string) *http.Request {
	t.Helper()
	return standin.NewPush("http://gateway"+standin.PushPath, standin.RemoteWriteBody(2, 1), tenant)
}

// Markers of the error table in docs/errors.md.
const errorTableBegin, errorTableEnd = "<!-- error table: begin -->", "<!-- error table: end -->"

// errorTableRows returns the rows of the error table: the cells of each,
// without the header.
func errorTableRows(t *testing.T) [][]string {
	t.Helper()
	doc := readFile(t, "../docs/errors.md")
	i, j := strings.Index(doc, errorTableBegin), strings.Index(doc, errorTableEnd)
	if i < 0 || j < i {
		t.Fatalf("docs/errors.md has no %s ... %s section", errorTableBegin, errorTableEnd)
	}
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSpace(doc[i+len(errorTableBegin):j]), "\n")[2:] {
		var cells []string
		for _, c := range strings.Split(strings.Trim(line, "|"), "|") {
			cells = append(cells, strings.TrimSpace(c))
		}
		rows = append(rows, cells)
	}
	return rows
}

// TestDocsErrorTableCaddyRows checks the rows of docs/errors.md's error
// table that the Caddy module answers before a backend is asked (package
// grpcpush's TestErrorTableInDocs checks the others), in a real Caddy.
func TestDocsErrorTableCaddyRows(t *testing.T) {
	cluster, err := standin.StartCluster("distributor.mimir.test", 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Stop)
	probes := map[string]struct {
		tenant string // the tenant option
		req    func() *http.Request
	}{
		"no call: several `X-Scope-OrgID` headers, without `tenant`": {"", func() *http.Request {
			r := pushRequest(t, "a")
			r.Header.Add("X-Scope-OrgID", "b")
			return r
		}},
		"no call: `tenant` evaluates empty, or not to one valid tenant ID": {"{http.request.header.X-User}", func() *http.Request {
			r := pushRequest(t, "a")
			r.Header.Set("X-User", "a|b")
			return r
		}},
	}
	found := 0
	for _, row := range errorTableRows(t) {
		p, ok := probes[row[0]]
		if !ok {
			continue
		}
		found++
		t.Run(row[0], func(t *testing.T) {
			want, err := strconv.Atoi(row[1])
			if err != nil {
				t.Fatalf("status cell %q: %v", row[1], err)
			}
			tenant := ""
			if p.tenant != "" {
				tenant = "tenant " + p.tenant
			}
			c := testcaddy.StartCaddyfile(t, fmt.Sprintf(":8000 {\n metrics_gateway {\n proxy {\n default http://127.0.0.1:1\n distributor %s\n }\n %s\n }\n}", cluster.Target(), tenant))
			resp, body, err := c.Do(p.req())
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != want || row[2] != "—" || resp.Header.Get("Retry-After") != "" {
				t.Errorf("got %d %q Retry-After %q; the table says %s, Retry-After %s", resp.StatusCode, body, resp.Header.Get("Retry-After"), row[1], row[2])
			}
			if n := cluster.Requests()[0]; n != 0 {
				t.Errorf("%d requests reached the distributor", n)
			}
		})
	}
	if found != len(probes) {
		t.Errorf("found %d of the %d rows this test checks in docs/errors.md", found, len(probes))
	}
}

// linkedDocs are the Markdown files whose links are checked.
func linkedDocs(t *testing.T) []string {
	return append(docFiles(t), "../BENCHMARKS.md", "../RELIABILITY.md",
		"../examples/demo/README.md", "../examples/kubernetes/README.md")
}

var (
	// mdLink is an inline Markdown link or image: [text](target "title").
	mdLink = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	// codeFence and codeSpan are code, where brackets are not links.
	codeFence = regexp.MustCompile("(?ms)^ {0,3}```.*?^ {0,3}```[^\n]*$")
	codeSpan  = regexp.MustCompile("`[^`\n]*`")
	// htmlAnchor is an explicit anchor.
	htmlAnchor = regexp.MustCompile(`<a\s+(?:name|id)="([^"]+)"`)
	// heading is an ATX heading.
	heading = regexp.MustCompile(`(?m)^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$`)
	// inlineLink is a link inside a heading: only its text counts.
	inlineLink = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
)

// anchors returns the anchors GitHub gives a Markdown file: one per
// heading (lower case, only letters, digits, '_', '-' and spaces kept,
// spaces as '-', "-1", "-2" ... for repeats) and the explicit ones.
func anchors(markdown string) map[string]bool {
	text := codeFence.ReplaceAllString(markdown, "")
	out := map[string]bool{}
	seen := map[string]int{}
	for _, m := range heading.FindAllStringSubmatch(text, -1) {
		title := inlineLink.ReplaceAllString(m[1], "$1")
		var b strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r) || unicode.Is(unicode.Pc, r):
				b.WriteRune(r)
			}
		}
		slug := b.String()
		if n := seen[slug]; n > 0 {
			out[slug+"-"+strconv.Itoa(n)] = true
		} else {
			out[slug] = true
		}
		seen[slug]++
	}
	for _, m := range htmlAnchor.FindAllStringSubmatch(text, -1) {
		out[m[1]] = true
	}
	return out
}

// pendingDocs are pages that come with the feature they document (access
// policies): a link to one passes while it does not exist, and is checked
// as any other once it does.
var pendingDocs = map[string]bool{"docs/access-policies.md": true}

// TestDocsLinks checks every relative link of the documentation: the file
// or directory exists, and a #anchor is a heading (or explicit anchor) of
// the Markdown file it points into.
func TestDocsLinks(t *testing.T) {
	checked := 0
	for _, name := range linkedDocs(t) {
		text := codeSpan.ReplaceAllString(codeFence.ReplaceAllString(readFile(t, name), ""), "")
		for _, m := range mdLink.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			checked++
			path, anchor, _ := strings.Cut(target, "#")
			file := name
			if path != "" {
				file = filepath.Join(filepath.Dir(name), path)
				if _, err := os.Stat(file); err != nil {
					if rel, _ := filepath.Rel("..", file); pendingDocs[filepath.ToSlash(rel)] && os.IsNotExist(err) {
						t.Logf("%s: link %q: not written yet", name, target)
						continue
					}
					t.Errorf("%s: link %q: %v", name, target, err)
					continue
				}
			}
			if anchor == "" {
				continue
			}
			if !strings.HasSuffix(file, ".md") {
				t.Errorf("%s: link %q: an anchor into a file that is not Markdown", name, target)
				continue
			}
			if !anchors(readFile(t, file))[anchor] {
				t.Errorf("%s: link %q: %s has no heading with anchor #%s", name, target, file, anchor)
			}
		}
	}
	t.Logf("%d relative links checked", checked)
}

// TestAnchors pins the anchor rules on headings of this repository's kind.
func TestAnchors(t *testing.T) {
	got := anchors("# Errors and `handle_errors`\n## Zone-aware routing (priority groups)\n## Sick distributors: least_conn and passive health checks\n" +
		"## Summary\n## Summary\n```\n# not a heading\n```\n### [Linked](x.md) title — with a dash\n")
	for _, want := range []string{"errors-and-handle_errors", "zone-aware-routing-priority-groups",
		"sick-distributors-least_conn-and-passive-health-checks", "summary", "summary-1", "linked-title--with-a-dash"} {
		if !got[want] {
			t.Errorf("no anchor %q in %v", want, got)
		}
	}
	if got["not-a-heading"] {
		t.Error("a line in a code block made an anchor")
	}
}
