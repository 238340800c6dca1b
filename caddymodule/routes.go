package caddymodule

import (
	"net/http"
	"strings"

	"github.com/metrics-gateway/metrics_gateway/access"
)

// This file is the route table: which Mimir/Cortex/GEM component serves
// which request path. It is data, in the order of the table in the README;
// Routes.Match implements "longest matching entry wins".

// Component names a backend in the proxy block, in GEM's YAML spelling.
type Component string

// The components a request can be routed to. ComponentGateway is not a
// backend: the gateway answers those paths itself.
const (
	ComponentGateway       Component = "gateway"
	ComponentDefault       Component = "default"
	ComponentAdminAPI      Component = "admin_api"
	ComponentAlertmanager  Component = "alertmanager"
	ComponentCompactor     Component = "compactor"
	ComponentDistributor   Component = "distributor"
	ComponentGraphite      Component = "graphite"
	ComponentIngester      Component = "ingester"
	ComponentQueryFrontend Component = "query_frontend"
	ComponentRuler         Component = "ruler"
	ComponentStoreGateway  Component = "store_gateway"
)

// Components lists every configurable backend, default first.
var Components = []Component{
	ComponentDefault, ComponentAdminAPI, ComponentAlertmanager, ComponentCompactor,
	ComponentDistributor, ComponentGraphite, ComponentIngester, ComponentQueryFrontend,
	ComponentRuler, ComponentStoreGateway,
}

// MatchKind says whether a route matches only its own path or also
// everything below it.
type MatchKind uint8

const (
	// Prefix matches the path itself and every path below it
	// ("/prometheus" matches "/prometheus", "/prometheus/" and
	// "/prometheus/api/v1/query", not "/prometheusx").
	Prefix MatchKind = iota
	// Exact matches the path only.
	Exact
)

func (k MatchKind) String() string {
	if k == Exact {
		return "exact"
	}
	return "prefix"
}

// Route is one row of the route table.
type Route struct {
	Path      string
	Match     MatchKind
	Component Component
	// Name is the route's label in metrics and logs, in Mimir's style
	// ("api_v1_push", "prometheus_api_v1_query_range"): one per row, so the
	// label's cardinality is bounded by the table, never by request paths.
	Name string
	// Scope is what a request on the route needs under access_policies
	// (see ScopeFor); zero for the paths the gateway answers itself.
	Scope RouteScope
	// Ingests marks the routes whose POSTs write series (pushes, OTLP,
	// Graphite ingestion): the writes mirrors copy.
	Ingests bool
}

// RouteScope is the access scope of a route's requests: Read for the
// methods that only read (GET, HEAD, OPTIONS), Write for the others.
type RouteScope struct {
	Read, Write access.Scope
}

// String is the scope, or the read and write scopes with their methods.
func (s RouteScope) String() string {
	if s.Read == s.Write {
		return string(s.Read)
	}
	return string(s.Read) + " (GET, HEAD, OPTIONS) / " + string(s.Write) + " (others)"
}

// ScopeFor returns the scope a request with the given method needs on the
// route ("" for the gateway's own paths).
func (r *Route) ScopeFor(method string) access.Scope {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return r.Scope.Read
	}
	return r.Scope.Write
}

// scope is a route scope for every method; scopeRW one that differs
// between reads and writes.
func scope(s access.Scope) RouteScope             { return RouteScope{Read: s, Write: s} }
func scopeRW(read, write access.Scope) RouteScope { return RouteScope{Read: read, Write: write} }

// Route scopes, as GEM's access policies use them.
var (
	scopeAdmin        = scope(access.ScopeAdmin)
	scopeMetricsRead  = scope(access.ScopeMetricsRead)
	scopeMetricsWrite = scope(access.ScopeMetricsWrite)
	scopeDelete       = scope(access.ScopeMetricsDelete)
	scopeRules        = scopeRW(access.ScopeRulesRead, access.ScopeRulesWrite)
	scopeAlerts       = scopeRW(access.ScopeAlertsRead, access.ScopeAlertsWrite)
	// scopeQueries is a query API's prefix: reads by GET, and any other
	// method only for admin, where the rows below it name no query taken
	// by POST (a write there is not a query).
	scopeQueries = scopeRW(access.ScopeMetricsRead, access.ScopeAdmin)
)

// Placeholders in route paths for the configurable Prometheus and
// Alertmanager HTTP prefixes (Mimir's -http.prometheus-http-prefix and
// -http.alertmanager-http-prefix).
const (
	prometheusPrefix   = "{prometheus_http_prefix}"
	alertmanagerPrefix = "{alertmanager_http_prefix}"
)

// routeTable is the route table with prefixes as placeholders. Rows below a
// component's broad prefix that only refine the metrics route name (the
// Prometheus query API) come right after it.
var routeTable = []Route{
	{Path: "/", Match: Exact, Component: ComponentGateway},
	{Path: "/ready", Match: Exact, Component: ComponentGateway},

	{Path: "/api/v1/push", Match: Prefix, Component: ComponentDistributor, Scope: scopeMetricsWrite, Ingests: true},
	{Path: "/otlp/v1/metrics", Match: Prefix, Component: ComponentDistributor, Scope: scopeMetricsWrite, Ingests: true},
	{Path: "/distributor", Match: Prefix, Component: ComponentDistributor, Scope: scopeAdmin},
	{Path: "/api/prom/push", Match: Exact, Component: ComponentDistributor, Scope: scopeMetricsWrite, Ingests: true},

	{Path: "/ingester", Match: Prefix, Component: ComponentIngester, Scope: scopeAdmin},

	{Path: alertmanagerPrefix, Match: Prefix, Component: ComponentAlertmanager, Scope: scopeAlerts},
	{Path: "/multitenant_alertmanager", Match: Prefix, Component: ComponentAlertmanager, Scope: scopeAdmin},
	{Path: "/api/v1/alerts", Match: Exact, Component: ComponentAlertmanager, Scope: scopeAlerts},

	{Path: prometheusPrefix + "/config/v1/rules", Match: Prefix, Component: ComponentRuler, Scope: scopeRules},
	{Path: prometheusPrefix + "/api/v1/rules", Match: Prefix, Component: ComponentRuler, Scope: scopeRules},
	{Path: prometheusPrefix + "/api/v1/alerts", Match: Prefix, Component: ComponentRuler, Scope: scopeRules},
	{Path: "/ruler", Match: Prefix, Component: ComponentRuler, Scope: scopeAdmin},
	{Path: "/api/v1/rules", Match: Prefix, Component: ComponentRuler, Scope: scopeRules},
	{Path: "/api/prom/rules", Match: Prefix, Component: ComponentRuler, Scope: scopeRules},
	{Path: "/api/prom/api/v1/rules", Match: Prefix, Component: ComponentRuler, Scope: scopeRules},
	{Path: "/api/prom/api/v1/alerts", Match: Prefix, Component: ComponentRuler, Scope: scopeRules},

	{Path: prometheusPrefix, Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeQueries},
	{Path: prometheusPrefix + "/api/v1", Match: Prefix, Component: ComponentQueryFrontend, Name: "prometheus_api_v1_other", Scope: scopeMetricsRead},
	{Path: prometheusPrefix + "/api/v1/query", Match: Exact, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},
	{Path: prometheusPrefix + "/api/v1/query_range", Match: Exact, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},
	{Path: prometheusPrefix + "/api/v1/query_exemplars", Match: Exact, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},
	{Path: prometheusPrefix + "/api/v1/series", Match: Exact, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},
	{Path: prometheusPrefix + "/api/v1/labels", Match: Exact, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},
	{Path: prometheusPrefix + "/api/v1/label", Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},
	{Path: prometheusPrefix + "/api/v1/metadata", Match: Exact, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},
	{Path: prometheusPrefix + "/api/v1/read", Match: Exact, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},
	{Path: prometheusPrefix + "/api/v1/cardinality", Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},
	{Path: prometheusPrefix + "/api/v1/format_query", Match: Exact, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},
	// Prometheus's TSDB admin API (Cortex's series deletion): not a read.
	{Path: prometheusPrefix + "/api/v1/admin", Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeDelete},
	// Cortex's legacy prefix also carries its configs API (rules,
	// Alertmanager configuration) and, on an Alertmanager, the whole
	// Alertmanager API: those writes need their own scopes.
	{Path: "/api/prom", Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeQueries},
	{Path: "/api/prom/read", Match: Exact, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},
	{Path: "/api/prom/configs/rules", Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeRules},
	{Path: "/api/prom/configs/alertmanager", Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeAlerts},
	{Path: "/api/prom/configs/templates", Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeAlerts},
	{Path: "/api/prom/api/v1/silence", Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeAlerts},
	{Path: "/api/prom/api/v1/silences", Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeAlerts},
	{Path: "/api/prom/api/v2", Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeAlerts},
	{Path: "/api/prom/api/v1", Match: Prefix, Component: ComponentQueryFrontend, Name: "api_prom_api_v1_other", Scope: scopeMetricsRead},
	{Path: "/api/prom/api/v1/admin", Match: Prefix, Component: ComponentQueryFrontend, Scope: scopeDelete},
	{Path: "/api/v1/status/buildinfo", Match: Exact, Component: ComponentQueryFrontend, Scope: scopeMetricsRead},

	{Path: "/api/v1/upload/block", Match: Prefix, Component: ComponentCompactor, Scope: scopeMetricsWrite},
	{Path: "/compactor", Match: Prefix, Component: ComponentCompactor, Scope: scopeAdmin},
	{Path: "/compactor/delete_tenant", Match: Exact, Component: ComponentCompactor, Scope: scopeDelete},
	{Path: "/compactor/delete_tenant_status", Match: Exact, Component: ComponentCompactor, Scope: scopeDelete},

	{Path: "/store-gateway", Match: Prefix, Component: ComponentStoreGateway, Scope: scopeAdmin},

	{Path: "/admin/api", Match: Prefix, Component: ComponentAdminAPI, Scope: scopeAdmin},

	// GEM's Graphite proxy: reads by GET; a POST to /graphite/metrics
	// ingests (a GET there is graphite-web's metrics find), one to
	// /graphite/config/* replaces the tenant's storage schemas or
	// aggregations, so any method but a read needs metrics:write, except
	// the reads Grafana's Graphite data source posts (/render,
	// /metrics/find).
	{Path: "/graphite", Match: Prefix, Component: ComponentGraphite, Scope: scopeRW(access.ScopeMetricsRead, access.ScopeMetricsWrite)},
	{Path: "/graphite/render", Match: Prefix, Component: ComponentGraphite, Scope: scopeMetricsRead},
	{Path: "/graphite/metrics", Match: Prefix, Component: ComponentGraphite, Scope: scopeRW(access.ScopeMetricsRead, access.ScopeMetricsWrite), Ingests: true},
	{Path: "/graphite/metrics/find", Match: Prefix, Component: ComponentGraphite, Scope: scopeMetricsRead},
	{Path: "/graphite/metrics/expand", Match: Prefix, Component: ComponentGraphite, Scope: scopeMetricsRead},
}

// defaultRoute is where a path that no row claims goes.
var defaultRoute = Route{Path: "", Match: Prefix, Component: ComponentDefault, Name: "other", Scope: scopeAdmin}

// RouteTable returns the route table with the given Prometheus and
// Alertmanager HTTP prefixes filled in.
func RouteTable(promPrefix, amPrefix string) []Route {
	table := make([]Route, len(routeTable))
	prefixes := strings.NewReplacer(prometheusPrefix, promPrefix, alertmanagerPrefix, amPrefix)
	for i, r := range routeTable {
		r.Path = prefixes.Replace(r.Path)
		if r.Name == "" {
			r.Name = routeName(r)
		}
		table[i] = r
	}
	return table
}

// routeName derives a Mimir-style route name from a path:
// "/prometheus/api/v1/query_range" → "prometheus_api_v1_query_range".
func routeName(r Route) string {
	switch r.Path {
	case "/":
		return "root"
	}
	name := strings.Trim(r.Path, "/")
	return strings.NewReplacer("/", "_", "-", "_", ".", "_").Replace(name)
}

// Routes matches request paths against a route table.
type Routes struct {
	// exact and prefix hold the rows by path; Match walks a path's parent
	// segments from the longest, so the longest matching row wins.
	exact  map[string]*Route
	prefix map[string]*Route
	rows   []Route
}

// NewRoutes builds a matcher for the table returned by RouteTable. Two rows
// with the same path and kind are a configuration error (e.g. both prefixes
// set to the same value).
func NewRoutes(table []Route) (*Routes, error) {
	rs := &Routes{exact: map[string]*Route{}, prefix: map[string]*Route{}, rows: table}
	for i := range rs.rows {
		row := &rs.rows[i]
		m := rs.prefix
		if row.Match == Exact {
			m = rs.exact
		}
		if prev, dup := m[row.Path]; dup {
			// A prefix may legitimately coincide with a fixed row of the
			// same component and scopes (Cortex's legacy /api/prom as the
			// Prometheus prefix); the first row keeps its name.
			if prev.Component != row.Component || prev.Scope != row.Scope {
				return nil, &duplicateRouteError{path: row.Path, a: *prev, b: *row}
			}
			continue
		}
		m[row.Path] = row
	}
	return rs, nil
}

type duplicateRouteError struct {
	path string
	a, b Route
}

func (e *duplicateRouteError) Error() string {
	claim := func(r Route) string { return string(r.Component) }
	if e.a.Component == e.b.Component {
		claim = func(r Route) string { return string(r.Component) + " with scope " + r.Scope.String() }
	}
	return "route " + e.path + " is claimed by both " + claim(e.a) + " and " + claim(e.b) +
		": prometheus_http_prefix and alertmanager_http_prefix must not collide with each other or with fixed routes"
}

// Match returns the route for a request path: the exact row for the path if
// there is one, else the prefix row with the longest path that is the path
// itself or one of its parent segments. It does not allocate.
func (rs *Routes) Match(path string) *Route {
	if r, ok := rs.exact[path]; ok {
		return r
	}
	// "/prometheus/" is "/prometheus" and everything below it.
	p := strings.TrimRight(path, "/")
	for p != "" {
		if r, ok := rs.prefix[p]; ok {
			return r
		}
		i := strings.LastIndexByte(p, '/')
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return &defaultRoute
}
