package caddymodule

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/metrics-gateway/metrics_gateway/orgid"
)

// tenantHeader is the header Mimir, Cortex and GEM read the tenant from.
const tenantHeader = orgid.Header

// canonicalTenantHeader is its key in an http.Header.
var canonicalTenantHeader = http.CanonicalHeaderKey(tenantHeader)

// Answers of requests whose tenant is unusable; they reach no backend.
const (
	msgNoTenant        = "no org id: the tenant placeholder is empty or not one valid tenant ID (is the request authenticated?)"
	msgMultipleTenants = "multiple X-Scope-OrgID headers"
	msgInvalidTenant   = "invalid X-Scope-OrgID: "
)

// setTenant sets the request's tenant header from the tenant or
// default_tenant config. It returns a status and message when the request
// must not reach a backend: 401 when tenant is configured but does not
// evaluate to one valid tenant ID; 400 when the client sent more than one
// X-Scope-OrgID header and tenant does not replace them (which of them a
// component would take is not defined: dskit rejects several values in gRPC
// metadata, and an HTTP component reads the first), or one that breaks
// Mimir's tenant rules (orgid.Check, every "|" part), whatever the backend.
func (g *Gateway) setTenant(r *http.Request, repl *caddy.Replacer) (int, string) {
	if g.Tenant != "" {
		if repl == nil {
			return http.StatusUnauthorized, msgNoTenant
		}
		tenant := repl.ReplaceAll(g.Tenant, "")
		// The identity must be one valid tenant: a "|" would turn it into
		// a federated query over several tenants.
		if CheckTenantID(tenant) != nil {
			return http.StatusUnauthorized, msgNoTenant
		}
		// Set, not Add: the authenticated identity replaces whatever the
		// client claimed.
		r.Header.Set(tenantHeader, tenant)
		return 0, ""
	}
	values := r.Header[canonicalTenantHeader]
	switch {
	case len(values) > 1:
		return http.StatusBadRequest, msgMultipleTenants
	case len(values) == 1 && values[0] != "":
		if err := orgid.Check(values[0]); err != nil {
			return http.StatusBadRequest, msgInvalidTenant + err.Error()
		}
	case g.DefaultTenant != "":
		r.Header.Set(tenantHeader, g.DefaultTenant)
	}
	return 0, ""
}

// CheckTenantID applies Mimir's rules for one tenant ID (orgid.CheckOne):
// dskit's own tenant.ValidTenantID (1 to 150 characters from
// [a-zA-Z0-9!-_.*'()], not "." or ".."), and not empty.
func CheckTenantID(id string) error { return orgid.CheckOne(id) }

// CheckTenantTemplate checks a `tenant` setting. One with placeholders is
// only known per request (and checked then); a literal one is the same
// tenant for every request, so a bad one can only be a mistake.
func CheckTenantTemplate(tmpl string) error {
	if strings.Contains(tmpl, "{") {
		return nil
	}
	return CheckTenantID(tmpl)
}
