//go:build unix

package caddymodule_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/access"
	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
)

// BenchmarkPushWithPolicies pushes Remote-Write bodies (2000 samples)
// through a real Caddy to a gRPC distributor stand-in in this process,
// without access_policies (the client sends X-Scope-OrgID) and with 1001
// policies (Basic credentials), 8 pushes in flight per GOMAXPROCS.
// cpu-ns/op is this process's user + system CPU per push: the gateway's,
// the client's and the stand-in's (which decodes the body), so the
// difference between the two is the decision's cost on the push path.
func BenchmarkPushWithPolicies(b *testing.B) {
	body := standin.RemoteWriteBody(2000, 1)
	cl, err := standin.StartCluster(distributorName, 1)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cl.Stop)

	policies := access.Config{Policies: []access.Policy{{
		Name: "team-a-writer", Tenants: []string{"team-a"}, Scopes: []string{"metrics:write"},
		Tokens: []access.Token{{Hash: access.HashToken(tokWriter)}},
	}}}
	for i := range 1000 {
		policies.Policies = append(policies.Policies, access.Policy{
			Name: fmt.Sprintf("bench-%d", i), Tenants: []string{fmt.Sprintf("tenant-%d", i)}, Scopes: []string{"metrics:write", "metrics:read"},
			Tokens: []access.Token{{Hash: access.HashToken(fmt.Sprintf("bench-token-%031d", i))}},
		})
	}
	policiesJSON, _ := json.Marshal(policies)

	for _, bc := range []struct {
		name, extra string
		auth        cred
	}{
		{"policies=none", "", func(h http.Header) { h.Set("X-Scope-OrgID", "team-a") }},
		{"policies=1001", `"access_policies": ` + string(policiesJSON) + `,`, basic("team-a", tokWriter)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := testcaddy.Start(b, fmt.Sprintf(`[{"handler": "metrics_gateway", %s "proxy": {
				"default": {"url": "http://127.0.0.1:1"}, "distributor": {"url": %q}}}]`, bc.extra, cl.Target()))
			pushOnce := func() error {
				resp, err := c.Client.Do(newPush(body, bc.auth))
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			}
			standin.PushCPU(b, len(body), 200, pushOnce)
		})
	}
}
