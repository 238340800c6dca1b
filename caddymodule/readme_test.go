package caddymodule

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestREADMERouteTable keeps the route table in README.md the same as the
// one the gateway runs.
func TestREADMERouteTable(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- route table: begin -->\n", "<!-- route table: end -->"
	text := string(readme)
	i, j := strings.Index(text, begin), strings.Index(text, end)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q ... %q section", begin, end)
	}
	got := text[i+len(begin) : j]
	want := renderRouteTable()
	if got != want {
		t.Errorf("README.md route table is out of date; it should read:\n%s", want)
	}
}

// renderRouteTable renders the table with the prefixes as placeholders and
// the route labels they get with the default prefixes.
func renderRouteTable() string {
	var b strings.Builder
	b.WriteString("| path | match | component | route label (default prefixes) | scope (access_policies) |\n|---|---|---|---|---|\n")
	labels := RouteTable("/prometheus", "/alertmanager")
	for i, r := range RouteTable("{prometheus_http_prefix}", "{alertmanager_http_prefix}") {
		fmt.Fprintf(&b, "| `%s` | %s | %s | `%s` | %s |\n", r.Path, r.Match, r.Component, labels[i].Name, scopeCell(r.Scope))
	}
	fmt.Fprintf(&b, "| anything else | prefix | %s | `%s` | %s |\n", defaultRoute.Component, defaultRoute.Name, scopeCell(defaultRoute.Scope))
	return b.String()
}

// scopeCell renders a route's scope for the table.
func scopeCell(s RouteScope) string {
	switch {
	case s.Read == "" && s.Write == "":
		return "none"
	case s.Read == s.Write:
		return "`" + string(s.Read) + "`"
	}
	return "`" + string(s.Read) + "` (GET, HEAD, OPTIONS) / `" + string(s.Write) + "` (others)"
}
