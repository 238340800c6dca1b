package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

// tenantHeader is the header Mimir, Cortex and GEM read the tenant from.
const tenantHeader = "X-Scope-OrgID"

// setTenant sets the request's tenant header from the tenant or
// default_tenant config. It returns false when a tenant is configured but
// evaluates empty for this request: it must then not reach a backend.
func (g *Gateway) setTenant(r *http.Request) bool {
	if g.Tenant != "" {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl == nil {
			return false
		}
		tenant := repl.ReplaceAll(g.Tenant, "")
		if tenant == "" {
			return false
		}
		// Set, not Add: the authenticated identity replaces whatever the
		// client claimed.
		r.Header.Set(tenantHeader, tenant)
		return true
	}
	if g.DefaultTenant != "" && r.Header.Get(tenantHeader) == "" {
		r.Header.Set(tenantHeader, g.DefaultTenant)
	}
	return true
}
