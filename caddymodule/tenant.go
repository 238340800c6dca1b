package caddymodule

import (
	"fmt"
	"net/http"
	"strings"

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
		// The identity must be one valid tenant: a "|" would turn it into
		// a federated query over several tenants.
		if CheckTenantID(tenant) != nil {
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

// maxTenantIDLength is Mimir's limit on a tenant ID.
const maxTenantIDLength = 150

// CheckTenantID applies Mimir's rules for one tenant ID (dskit's
// tenant.ValidTenantID): 1 to 150 characters from [a-zA-Z0-9!-_.*'()],
// and not "." or "..".
func CheckTenantID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("tenant ID is empty")
	case len(id) > maxTenantIDLength:
		return fmt.Errorf("tenant ID is longer than %d characters", maxTenantIDLength)
	case id == "." || id == "..":
		return fmt.Errorf("tenant ID %q is not allowed", id)
	}
	for _, r := range id {
		if !isTenantIDChar(r) {
			return fmt.Errorf("tenant ID %q contains %q: only letters, digits and !-_.*'() are allowed", id, r)
		}
	}
	return nil
}

func isTenantIDChar(r rune) bool {
	switch {
	case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		return true
	}
	return strings.ContainsRune("!-_.*'()", r)
}

// CheckTenantTemplate checks a `tenant` setting. One with placeholders is
// only known per request (and checked then); a literal one is the same
// tenant for every request, so a bad one can only be a mistake.
func CheckTenantTemplate(tmpl string) error {
	if strings.Contains(tmpl, "{") {
		return nil
	}
	return CheckTenantID(tmpl)
}
