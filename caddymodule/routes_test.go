package caddymodule

import (
	"testing"
)

// TestRouteTable checks every row of the route table and its boundaries
// with the default prefixes.
func TestRouteTable(t *testing.T) {
	t.Parallel()
	rs, err := NewRoutes(RouteTable("/prometheus", "/alertmanager"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path string
		want Component
	}{
		{"/", ComponentGateway},
		{"/ready", ComponentGateway},
		{"/ready/", ComponentDefault}, // exact
		{"/readyz", ComponentDefault},

		{"/api/v1/push", ComponentDistributor},
		{"/api/v1/push/influx/write", ComponentDistributor},
		{"/api/v1/pushx", ComponentDefault},
		{"/otlp/v1/metrics", ComponentDistributor},
		{"/distributor", ComponentDistributor},
		{"/distributor/all_user_stats", ComponentDistributor},
		{"/distributor/ha_tracker", ComponentDistributor},
		{"/api/prom/push", ComponentDistributor},
		{"/api/prom/push/x", ComponentQueryFrontend}, // exact row; /api/prom prefix takes the rest

		{"/ingester", ComponentIngester},
		{"/ingester/ring", ComponentIngester},
		{"/ingester/flush", ComponentIngester},
		{"/ingester/tsdb/tenant-1", ComponentIngester},

		{"/alertmanager", ComponentAlertmanager},
		{"/alertmanager/api/v2/alerts", ComponentAlertmanager},
		{"/multitenant_alertmanager/status", ComponentAlertmanager},
		{"/api/v1/alerts", ComponentAlertmanager},
		{"/api/v1/alerts/x", ComponentDefault}, // exact

		{"/prometheus/config/v1/rules", ComponentRuler},
		{"/prometheus/config/v1/rules/ns/group", ComponentRuler},
		{"/prometheus/api/v1/rules", ComponentRuler},
		{"/prometheus/api/v1/alerts", ComponentRuler},
		{"/ruler/ring", ComponentRuler},
		{"/ruler/rule_groups", ComponentRuler},
		{"/api/v1/rules", ComponentRuler},
		{"/api/v1/rules/ns", ComponentRuler},
		{"/api/prom/rules/ns", ComponentRuler},
		{"/api/prom/api/v1/rules", ComponentRuler},
		{"/api/prom/api/v1/alerts", ComponentRuler},

		{"/prometheus", ComponentQueryFrontend},
		{"/prometheus/", ComponentQueryFrontend},
		{"/prometheus/api/v1/query", ComponentQueryFrontend},
		{"/prometheus/api/v1/query_range", ComponentQueryFrontend},
		{"/prometheus/api/v1/series", ComponentQueryFrontend},
		{"/prometheus/api/v1/label/job/values", ComponentQueryFrontend},
		{"/prometheus/api/v1/read", ComponentQueryFrontend},
		{"/prometheus/api/v1/cardinality/label_names", ComponentQueryFrontend},
		{"/prometheusx", ComponentDefault},
		{"/api/prom", ComponentQueryFrontend},
		{"/api/prom/api/v1/query", ComponentQueryFrontend},
		{"/api/v1/status/buildinfo", ComponentQueryFrontend},

		{"/api/v1/upload/block/01ABC/files", ComponentCompactor},
		{"/compactor/ring", ComponentCompactor},
		{"/compactor/delete_tenant", ComponentCompactor},
		{"/compactor/delete_tenant_status", ComponentCompactor},
		{"/prometheus/api/v1/admin/tsdb/delete_series", ComponentQueryFrontend},
		{"/graphite/metrics", ComponentGraphite},
		{"/graphite/render", ComponentGraphite},
		{"/store-gateway/tenants", ComponentStoreGateway},
		{"/admin/api/v3/tenants", ComponentAdminAPI},
		{"/graphite/metrics/find", ComponentGraphite},

		{"/config", ComponentDefault},
		{"/memberlist", ComponentDefault},
		{"/api/v1/user_limits", ComponentDefault},
		{"/debug/pprof/heap", ComponentDefault},
		{"", ComponentDefault},
		{"//", ComponentDefault},
	}
	for _, c := range cases {
		if got := rs.Match(c.path).Component; got != c.want {
			t.Errorf("Match(%q) = %s, want %s", c.path, got, c.want)
		}
	}
}

func TestRouteTableCustomPrefixes(t *testing.T) {
	t.Parallel()
	rs, err := NewRoutes(RouteTable("/mimir/prom", "/am"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path string
		want Component
	}{
		{"/mimir/prom/api/v1/query", ComponentQueryFrontend},
		{"/mimir/prom/api/v1/rules", ComponentRuler},
		{"/mimir/prom/api/v1/alerts", ComponentRuler},
		{"/mimir", ComponentDefault},
		{"/prometheus/api/v1/query", ComponentDefault},
		{"/am/api/v2/status", ComponentAlertmanager},
		{"/alertmanager", ComponentDefault},
		{"/api/v1/alerts", ComponentAlertmanager},
	}
	for _, c := range cases {
		if got := rs.Match(c.path).Component; got != c.want {
			t.Errorf("Match(%q) = %s, want %s", c.path, got, c.want)
		}
	}
}

// TestRouteTableCortexPrefix uses Cortex's legacy /api/prom as the
// Prometheus prefix: its rows coincide with fixed rows of the same
// component, which is allowed.
func TestRouteTableCortexPrefix(t *testing.T) {
	t.Parallel()
	rs, err := NewRoutes(RouteTable("/api/prom", "/alertmanager"))
	if err != nil {
		t.Fatal(err)
	}
	if got := rs.Match("/api/prom/api/v1/rules").Component; got != ComponentRuler {
		t.Errorf("got %s, want ruler", got)
	}
	if got := rs.Match("/api/prom/api/v1/query").Component; got != ComponentQueryFrontend {
		t.Errorf("got %s, want query_frontend", got)
	}
}

func TestRouteTableCollidingPrefixes(t *testing.T) {
	t.Parallel()
	_, err := NewRoutes(RouteTable("/same", "/same"))
	if err == nil || err.Error() != "route /same is claimed by both alertmanager and query_frontend: prometheus_http_prefix and alertmanager_http_prefix must not collide with each other or with fixed routes" {
		t.Fatalf("got %v", err)
	}
}

// TestRouteTablePrefixOnAFixedRow: a prefix that coincides with a fixed
// row of its component but other scopes (the multi-tenant Alertmanager's
// admin pages) is refused, not silently given the first row's scope.
func TestRouteTablePrefixOnAFixedRow(t *testing.T) {
	t.Parallel()
	_, err := NewRoutes(RouteTable("/prometheus", "/multitenant_alertmanager"))
	if err == nil || err.Error() != "route /multitenant_alertmanager is claimed by both alertmanager with scope alerts:read (GET, HEAD, OPTIONS) / alerts:write (others) and alertmanager with scope admin: prometheus_http_prefix and alertmanager_http_prefix must not collide with each other or with fixed routes" {
		t.Fatalf("got %v", err)
	}
}

func TestRouteNames(t *testing.T) {
	t.Parallel()
	rs, err := NewRoutes(RouteTable("/prometheus", "/alertmanager"))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"/api/v1/push":                      "api_v1_push",
		"/otlp/v1/metrics":                  "otlp_v1_metrics",
		"/prometheus/api/v1/query_range":    "prometheus_api_v1_query_range",
		"/prometheus/api/v1/label/x/values": "prometheus_api_v1_label",
		"/store-gateway/tenants":            "store_gateway",
		"/prometheus/api/v1/foo":            "prometheus_api_v1_other",
		"/prometheus/foo":                   "prometheus",
		"/api/prom/api/v1/query":            "api_prom_api_v1_other",
		"/":                                 "root",
		"/nothing":                          "other",
	}
	for path, want := range cases {
		if got := rs.Match(path).Name; got != want {
			t.Errorf("Match(%q).Name = %q, want %q", path, got, want)
		}
	}
	seen := map[string]bool{}
	for _, r := range rs.Rows() {
		if seen[r.Name] {
			t.Errorf("route name %q used twice", r.Name)
		}
		seen[r.Name] = true
	}
}

func BenchmarkRouteMatch(b *testing.B) {
	rs, err := NewRoutes(RouteTable("/prometheus", "/alertmanager"))
	if err != nil {
		b.Fatal(err)
	}
	paths := []string{"/api/v1/push", "/prometheus/api/v1/query_range", "/api/v1/upload/block/01ABC/files/chunks/000001", "/unknown/path"}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		rs.Match(paths[i%len(paths)])
	}
}
