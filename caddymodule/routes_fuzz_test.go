package caddymodule

import (
	"strings"
	"testing"
)

// FuzzRouteMatch checks the route matcher against the definition in the
// README on arbitrary paths and prefixes: the exact row for the path, else
// the longest prefix row that is the path or one of its parent segments
// (first row on ties), else default.
func FuzzRouteMatch(f *testing.F) {
	for _, s := range [][3]string{
		{"/api/v1/push", "/prometheus", "/alertmanager"},
		{"/prometheus/api/v1/query_range", "/prometheus", "/alertmanager"},
		{"/prometheus//api/v1/query", "/prometheus", "/alertmanager"},
		{"/api/prom/api/v1/query", "/api/prom", "/alertmanager"},
		{"/x/y/", "/x", "/x/y"},
		{"//", "/prometheus", "/alertmanager"},
		{"", "/p", "/a"},
		{"/alertmanager/api/v2/alerts", "/alertmanager", "/prometheus"},
		{"/ready/", "/prometheus", "/alertmanager"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, path, prom, am string) {
		// Bounded: huge inputs say nothing new and make minimizing crawl.
		if len(path)+len(prom)+len(am) > 4096 || CheckPrefix(prom) != nil || CheckPrefix(am) != nil {
			return
		}
		rs, err := NewRoutes(RouteTable(prom, am))
		if err != nil {
			if _, ok := err.(*duplicateRouteError); !ok {
				t.Fatalf("prefixes %q %q: %v", prom, am, err)
			}
			return
		}
		got := rs.Match(path)
		want := matchByDefinition(rs.Rows(), path)
		if got.Component != want.Component || got.Name != want.Name || got.Path != want.Path {
			t.Fatalf("prefixes %q %q, path %q: got %+v, want %+v", prom, am, path, *got, want)
		}
	})
}

// matchByDefinition is the route rule written as plainly as possible: a
// linear scan over the rows.
func matchByDefinition(rows []Route, path string) Route {
	for _, r := range rows {
		if r.Match == Exact && r.Path == path {
			return r
		}
	}
	p := strings.TrimRight(path, "/")
	best := -1
	for i, r := range rows {
		if r.Match != Prefix || (p != r.Path && !strings.HasPrefix(p, r.Path+"/")) {
			continue
		}
		if best < 0 || len(r.Path) > len(rows[best].Path) {
			best = i
		}
	}
	if best < 0 {
		return defaultRoute
	}
	return rows[best]
}
