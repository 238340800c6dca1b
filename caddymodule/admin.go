package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// live holds the provisioned gateways of the running config(s), for the
// admin API. During a reload both the old and the new config's gateways are
// in it for a moment.
var live sync.Map // *Gateway → struct{}

// adminAPI serves GET /metrics_gateway/backends on Caddy's admin endpoint:
// every configured backend, its kind and target, and for gRPC backends each
// resolved endpoint with its connectivity state and requests served, like
// reverse_proxy's /reverse_proxy/upstreams; and GET
// /metrics_gateway/policies: the access policies in force (access.go).
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.metrics_gateway",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes of the module.
func (adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: "/metrics_gateway/backends",
		Handler: caddy.AdminHandlerFunc(serveBackends),
	}, {
		Pattern: "/metrics_gateway/policies",
		Handler: caddy.AdminHandlerFunc(servePolicies),
	}}
}

func serveBackends(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(backendStatuses())
}

// backendStatuses lists the backends and mirrors (component "mirror") of
// every live gateway, each distinct (component, kind, target) once, sorted.
func backendStatuses() []BackendStatus {
	seen := map[string]bool{}
	out := []BackendStatus{}
	add := func(st BackendStatus) {
		key := string(st.Component) + "\x00" + string(st.Kind) + "\x00" + st.Target
		if !seen[key] {
			seen[key] = true
			out = append(out, st)
		}
	}
	live.Range(func(k, _ any) bool {
		g := k.(*Gateway)
		for _, c := range Components {
			b := g.Proxy.Get(c)
			if b == nil {
				continue
			}
			add(g.backends[c].status())
		}
		for _, m := range g.mirrors {
			st := m.sender.status()
			st.InFlight = m.InFlight()
			add(st)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Component != out[j].Component {
			return out[i].Component < out[j].Component
		}
		return out[i].Target < out[j].Target
	})
	return out
}

// Interface guards.
var _ caddy.AdminRouter = (*adminAPI)(nil)
