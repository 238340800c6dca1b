package caddymodule

import (
	"net/http"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/access"
)

// TestRouteScopes checks the scope each kind of request needs under
// access_policies, per method where reads and writes differ.
func TestRouteScopes(t *testing.T) {
	t.Parallel()
	rs, err := NewRoutes(RouteTable("/prometheus", "/alertmanager"))
	if err != nil {
		t.Fatal(err)
	}
	const (
		none   = access.Scope("")
		mw     = access.ScopeMetricsWrite
		mr     = access.ScopeMetricsRead
		md     = access.ScopeMetricsDelete
		rr     = access.ScopeRulesRead
		rw     = access.ScopeRulesWrite
		ar     = access.ScopeAlertsRead
		aw     = access.ScopeAlertsWrite
		admin  = access.ScopeAdmin
		get    = http.MethodGet
		post   = http.MethodPost
		put    = http.MethodPut
		del    = http.MethodDelete
		head   = http.MethodHead
		opts   = http.MethodOptions
		custom = "PROPFIND"
	)
	cases := []struct {
		method, path string
		want         access.Scope
	}{
		{get, "/", none},
		{get, "/ready", none},

		// Writes, whatever the method.
		{post, "/api/v1/push", mw},
		{get, "/api/v1/push", mw},
		{post, "/api/v1/push/influx/write", mw},
		{post, "/otlp/v1/metrics", mw},
		{post, "/api/prom/push", mw},
		{post, "/api/v1/upload/block/01ABC/start", mw},
		{post, "/api/v1/upload/block/01ABC/files", mw},

		// Reads, whatever the method (queries are POSTed too).
		{get, "/prometheus/api/v1/query", mr},
		{post, "/prometheus/api/v1/query_range", mr},
		{post, "/prometheus/api/v1/read", mr},
		{get, "/prometheus/api/v1/metadata", mr},
		{get, "/prometheus/api/v1/cardinality/label_names", mr},
		{get, "/prometheus/api/v1/status/buildinfo", mr},
		{get, "/api/v1/status/buildinfo", mr},
		{get, "/api/prom/api/v1/query", mr},
		{get, "/graphite/render", mr},
		{post, "/graphite/render", mr},
		{post, "/graphite/metrics/find", mr},
		{get, "/graphite/metrics/expand", mr},
		{get, "/graphite/tags/autoComplete/tags", mr},

		{post, "/api/prom/read", mr},
		{post, "/api/prom/api/v1/query_range", mr},

		// Graphite ingestion, and GEM's per-tenant storage schemas and
		// aggregations (a POST replaces them); any Graphite request but a
		// read is a write.
		{post, "/graphite/metrics", mw},
		{post, "/graphite/metrics/", mw},
		{get, "/graphite/metrics", mr},
		{post, "/graphite/metrics/other", mw},
		{get, "/graphite/config/storageSchemas", mr},
		{post, "/graphite/config/storageSchemas", mw},
		{post, "/graphite/config/storageAggregations", mw},
		{post, "/graphite/tags/delSeries", mw},

		// Writes under a query API's prefix are not queries: Cortex's
		// configs API and, on an Alertmanager, the Alertmanager API under
		// /api/prom.
		{post, "/prometheus/anything", admin},
		{get, "/prometheus/anything", mr},
		{post, "/api/prom/configs/rules", rw},
		{get, "/api/prom/configs/rules", rr},
		{post, "/api/prom/configs/alertmanager", aw},
		{post, "/api/prom/configs/alertmanager/validate", aw},
		{post, "/api/prom/configs/templates", aw},
		{del, "/api/prom/configs/deactivate", admin},
		{post, "/api/prom/configs/restore", admin},
		{post, "/api/prom/api/v1/silences", aw},
		{del, "/api/prom/api/v1/silence/abc", aw},
		{get, "/api/prom/api/v2/alerts", ar},
		{post, "/api/prom/api/v2/silences", aw},
		{del, "/api/prom/api/v2/silence/abc", aw},

		// Deletion.
		{post, "/compactor/delete_tenant", md},
		{get, "/compactor/delete_tenant_status", md},
		{post, "/prometheus/api/v1/admin/tsdb/delete_series", md},
		{post, "/api/prom/api/v1/admin/tsdb/delete_series", md},

		// The ruler's configuration and state.
		{get, "/prometheus/config/v1/rules", rr},
		{get, "/prometheus/config/v1/rules/ns/group", rr},
		{post, "/prometheus/config/v1/rules/ns", rw},
		{del, "/prometheus/config/v1/rules/ns/group", rw},
		{get, "/prometheus/api/v1/rules", rr},
		{get, "/prometheus/api/v1/alerts", rr},
		{get, "/api/v1/rules/ns", rr},
		{post, "/api/v1/rules/ns", rw},
		{head, "/api/prom/rules", rr},
		{put, "/api/prom/rules/ns", rw},
		{get, "/api/prom/api/v1/alerts", rr},

		// Alertmanager.
		{get, "/alertmanager/api/v2/alerts", ar},
		{opts, "/alertmanager/api/v2/silences", ar},
		{post, "/alertmanager/api/v2/silences", aw},
		{del, "/alertmanager/api/v2/silence/abc", aw},
		{get, "/api/v1/alerts", ar},
		{post, "/api/v1/alerts", aw},
		{del, "/api/v1/alerts", aw},
		{custom, "/api/v1/alerts", aw},

		// Operators' pages and APIs, and whatever the table does not claim.
		{get, "/distributor/all_user_stats", admin},
		{get, "/distributor/ha_tracker", admin},
		{get, "/ingester/ring", admin},
		{post, "/ingester/flush", admin},
		{get, "/ruler/ring", admin},
		{get, "/ruler/rule_groups", admin},
		{get, "/compactor/ring", admin},
		{post, "/compactor/delete_tenant/x", admin},
		{get, "/store-gateway/tenants", admin},
		{get, "/multitenant_alertmanager/status", admin},
		{get, "/admin/api/v3/tenants", admin},
		{get, "/config", admin},
		{get, "/memberlist", admin},
		{get, "/api/v1/user_limits", admin},
		{get, "/debug/pprof/heap", admin},
		{get, "/prometheusx", admin},
	}
	for _, c := range cases {
		if got := rs.Match(c.path).ScopeFor(c.method); got != c.want {
			t.Errorf("%s %s needs %q, want %q", c.method, c.path, got, c.want)
		}
	}
}

// TestEveryRouteHasAScope: a row without a scope would let any credential
// through; only the gateway's own paths have none.
func TestEveryRouteHasAScope(t *testing.T) {
	t.Parallel()
	for _, prefixes := range [][2]string{{"/prometheus", "/alertmanager"}, {"/api/prom", "/am"}} {
		table := RouteTable(prefixes[0], prefixes[1])
		seen := map[string]RouteScope{}
		for _, r := range append(table, defaultRoute) {
			gateway := r.Component == ComponentGateway
			for _, s := range []access.Scope{r.Scope.Read, r.Scope.Write} {
				if gateway != (s == "") || (s != "" && !s.Valid()) {
					t.Errorf("%s (%s): scope %+v", r.Path, r.Component, r.Scope)
				}
			}
			// Rows that coincide under these prefixes (Cortex's /api/prom)
			// are merged by NewRoutes, which keeps the first: they must
			// agree.
			key := r.Path + " " + r.Match.String()
			if prev, ok := seen[key]; ok && prev != r.Scope {
				t.Errorf("%s: coinciding rows with scopes %+v and %+v", key, prev, r.Scope)
			}
			seen[key] = r.Scope
		}
	}
}

// TestMirroredRoutes: the mirrors copy the POSTs that ingest series, and no
// other write.
func TestMirroredRoutes(t *testing.T) {
	t.Parallel()
	rs, err := NewRoutes(RouteTable("/prometheus", "/alertmanager"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		method, path string
		want         bool
	}{
		{http.MethodPost, "/api/v1/push", true},
		{http.MethodPost, "/api/v1/push/influx/write", true},
		{http.MethodPost, "/otlp/v1/metrics", true},
		{http.MethodPost, "/api/prom/push", true},
		{http.MethodPost, "/graphite/metrics", true},
		{http.MethodGet, "/api/v1/push", false},
		{http.MethodPut, "/api/v1/push", false},
		{http.MethodGet, "/graphite/metrics", false},
		{http.MethodPost, "/graphite/metrics/find", false},
		{http.MethodPost, "/graphite/config/storageSchemas", false},
		{http.MethodPost, "/graphite/tags/delSeries", false},
		{http.MethodPost, "/api/v1/upload/block/01ABC/start", false},
		{http.MethodPost, "/prometheus/config/v1/rules/ns", false},
		{http.MethodPost, "/prometheus/api/v1/query", false},
	} {
		if got := rs.Match(c.path).mirrored(c.method); got != c.want {
			t.Errorf("%s %s mirrored: %v, want %v", c.method, c.path, got, c.want)
		}
	}
}
