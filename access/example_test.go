package access_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/metrics-gateway/metrics_gateway/access"
)

func Example() {
	token, hash, err := access.NewToken()
	if err != nil {
		panic(err)
	}
	cfg := access.Config{Policies: []access.Policy{{
		Name:    "team-a-writer",
		Tenants: []string{"team-a"},
		Scopes:  []string{string(access.ScopeMetricsWrite)},
		Tokens:  []access.Token{{Hash: hash}},
	}}}
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	g, err := access.New(cfg, access.Options{})
	if err != nil {
		panic(err)
	}
	defer g.Close()

	// In front of the distributor's push endpoint:
	push := func(w http.ResponseWriter, r *http.Request) {
		d := g.Decide(r, access.ScopeMetricsWrite)
		if !d.Allowed() {
			if d.WWWAuthenticate != "" {
				w.Header().Set("WWW-Authenticate", d.WWWAuthenticate)
			}
			http.Error(w, d.Message, d.Status)
			return
		}
		d.Apply(r)
		fmt.Fprintf(w, "tenant %s, Authorization %q\n", r.Header.Get("X-Scope-OrgID"), r.Header.Get("Authorization"))
	}

	for _, pass := range []string{token, "wrong"} {
		r := httptest.NewRequest(http.MethodPost, "/api/v1/push", nil)
		r.SetBasicAuth("team-a", pass)
		w := httptest.NewRecorder()
		push(w, r)
		fmt.Print(w.Code, " ", w.Header().Get("WWW-Authenticate"), " ", w.Body.String())
	}
	// Output:
	// 200  tenant team-a, Authorization ""
	// 401 Basic realm="metrics_gateway" invalid or unknown token
}
