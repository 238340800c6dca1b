package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/grafana/dskit/tenant"

	"github.com/metrics-gateway/metrics_gateway/orgid"
)

// FuzzTenant drives the tenant handling with arbitrary client headers,
// tenant templates and placeholder output (what basic_auth or forward_auth
// would put in {http.auth.user.id}). The request reaches a backend only with
// exactly one X-Scope-OrgID; with `tenant` set that is the template's value,
// one ID valid by dskit's own rules, never the client's; without it a client
// value that breaks the rules is answered 400; CheckTenantID agrees
// with dskit's tenant.ValidTenantID everywhere.
func FuzzTenant(f *testing.F) {
	f.Add("{http.auth.user.id}", "alice", "mallory", "")
	f.Add("{http.auth.user.id}", "a|b", "", "")
	f.Add("team-{http.auth.user.id}", "x\r\ny", "b", "")
	f.Add("", "", "", "anonymous")
	f.Add("", "", "client", "anonymous")
	f.Add("{http.auth.user.id}", "", "client", "anonymous")
	f.Add("{http.auth.user.id}", "..", "", "")
	f.Add("{http.request.header.X-User}", "\x00", "ü", "")
	f.Fuzz(func(t *testing.T, template, user, clientTenant, defaultTenant string) {
		if len(template)+len(user)+len(clientTenant)+len(defaultTenant) > 4096 {
			return
		}
		checkTenantIDAgreesWithDskit(t, user)
		checkTenantIDAgreesWithDskit(t, clientTenant)
		if defaultTenant != "" && CheckTenantID(defaultTenant) != nil {
			return // refused at provision
		}
		g := &Gateway{Tenant: template, DefaultTenant: defaultTenant}
		r := httptest.NewRequest(http.MethodPost, "/api/v1/push", nil)
		if clientTenant != "" {
			r.Header["X-Scope-Orgid"] = []string{clientTenant}
		}
		repl := caddy.NewReplacer()
		repl.Set("http.auth.user.id", user)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		code, _ := g.setTenant(r, repl)
		ok := code == 0
		got := r.Header.Values(tenantHeader)
		switch {
		case template != "":
			want := repl.ReplaceAll(template, "")
			if ok != (CheckTenantID(want) == nil) {
				t.Fatalf("template %q → %q: setTenant %v", template, want, ok)
			}
			if !ok {
				return
			}
			if len(got) != 1 || got[0] != want || tenant.ValidTenantID(got[0]) != nil {
				t.Fatalf("template %q, user %q, client %q: X-Scope-OrgID %q", template, user, clientTenant, got)
			}
		case clientTenant != "" && orgid.Check(clientTenant) != nil:
			if code != http.StatusBadRequest {
				t.Fatalf("client %q breaks the tenant rules, but setTenant answered %d", clientTenant, code)
			}
		case !ok:
			t.Fatalf("no template but setTenant refused (client %q, default %q)", clientTenant, defaultTenant)
		case clientTenant != "":
			if len(got) != 1 || got[0] != clientTenant {
				t.Fatalf("client %q, default %q: X-Scope-OrgID %q", clientTenant, defaultTenant, got)
			}
		case defaultTenant != "":
			if len(got) != 1 || got[0] != defaultTenant {
				t.Fatalf("default %q: X-Scope-OrgID %q", defaultTenant, got)
			}
		default:
			if len(got) != 0 {
				t.Fatalf("no tenant anywhere, but X-Scope-OrgID %q", got)
			}
		}
	})
}

func checkTenantIDAgreesWithDskit(t *testing.T, id string) {
	ours, theirs := CheckTenantID(id) == nil, id != "" && tenant.ValidTenantID(id) == nil
	if ours != theirs {
		t.Fatalf("tenant ID %q: CheckTenantID says valid=%v, dskit says %v", id, ours, theirs)
	}
}
