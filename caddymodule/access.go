package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/metrics-gateway/metrics_gateway/access"
)

// This file wires package access into the gateway: access_policies in the
// config, one Guard per Gateway instance (made in Provision, closed in
// Cleanup), the decision per request, its metric, placeholder and log
// fields, and the admin view /metrics_gateway/policies.

// authRequests is metrics_gateway_auth_requests_total{policy, result}, one
// collector shared by every Guard of every config, like the request
// metrics.
var authRequests = access.NewRequestsCounter()

// cachedTokens is metrics_gateway_auth_jwt_cache_entries, the verified JWTs
// every Guard remembers.
var cachedTokens = access.NewCachedTokensGauge()

// placeholderPolicy is the name of the policy of the request's credential
// ("" when none matched), set on every request decided under
// access_policies.
const placeholderPolicy = "http.metrics_gateway.policy"

// gatewayAccess is a Gateway's access state.
type gatewayAccess struct {
	guard *access.Guard // nil without access_policies
	seq   uint64        // provisioning order, for the admin view
}

// guardSeq numbers the Guards in the order they were made.
var guardSeq atomic.Uint64

// checkAccess checks access_policies (no I/O: the policy file is read by
// Provision). With it, the policies decide the tenant, so tenant and
// default_tenant are refused rather than silently ignored.
func (g *Gateway) checkAccess() error {
	if g.AccessPolicies == nil {
		return nil
	}
	if g.Tenant != "" {
		return errors.New("access_policies: not allowed together with tenant (the access policies decide the tenant of each request)")
	}
	if g.DefaultTenant != "" {
		return errors.New("access_policies: not allowed together with default_tenant (a token whose policy grants one tenant uses it when the request names none)")
	}
	if err := g.AccessPolicies.Validate(); err != nil {
		return err
	}
	if a := g.AccessPolicies; a.File == "" && a.OIDC == nil {
		if len(a.Policies) == 0 {
			return errors.New("access_policies: no policy, file or oidc: every request would be refused")
		}
		if !slices.ContainsFunc(a.Policies, func(p access.Policy) bool { return len(p.Tokens) > 0 }) {
			return errors.New("access_policies: no policy has a token, and there is no file or oidc: every request would be refused")
		}
	}
	return nil
}

// provisionAccess makes the Gateway's Guard: it reads the policy file (an
// error when it cannot be read or is invalid) and starts watching it.
func (g *Gateway) provisionAccess(ctx caddy.Context) error {
	if g.AccessPolicies == nil {
		return nil
	}
	if err := registerCollectors(ctx, authRequests, cachedTokens); err != nil {
		return err
	}
	guard, err := access.New(*g.AccessPolicies, access.Options{Logger: g.logger, Metrics: authRequests, CachedTokens: cachedTokens})
	if err != nil {
		return err // names access_policies.file
	}
	g.access = gatewayAccess{guard: guard, seq: guardSeq.Add(1)}
	return nil
}

// cleanupAccess stops the Guard's file watcher and OIDC key fetches.
// Requests still in flight on this config are decided with the policies
// last loaded.
func (g *Gateway) cleanupAccess() {
	if g.access.guard != nil {
		_ = g.access.guard.Close()
	}
}

// admit decides whether the request may go to a backend and prepares it:
// under access_policies by its credential and the route's scope, else by
// tenant or default_tenant (setTenant). It returns the status and message of
// a refusal; a 401's WWW-Authenticate challenge is already set on w.
func (g *Gateway) admit(w http.ResponseWriter, r *http.Request, route *Route, repl *caddy.Replacer) (int, string) {
	guard := g.access.guard
	if guard == nil {
		return g.setTenant(r, repl)
	}
	d := guard.Decide(r, route.ScopeFor(r.Method))
	if repl != nil {
		repl.Set(placeholderPolicy, d.Policy)
	}
	fields := [4]zap.Field{zap.String("metrics_gateway.policy", d.Policy), zap.String("metrics_gateway.auth", d.Result())}
	n := 2
	if d.Subject != "" {
		fields[n] = zap.String("metrics_gateway.subject", d.Subject)
		n++
	}
	if d.Detail != "" {
		fields[n] = zap.String("metrics_gateway.auth_detail", d.Detail)
		n++
	}
	addLogFields(r, fields[:n]...)
	if !d.Allowed() {
		if d.WWWAuthenticate != "" {
			w.Header().Set("WWW-Authenticate", d.WWWAuthenticate)
		}
		return d.Status, d.Message
	}
	d.Apply(r)
	return 0, ""
}

// PoliciesStatus is one live gateway's access policies, as
// GET /metrics_gateway/policies lists them: never a token or a hash.
type PoliciesStatus struct {
	// Realm is the WWW-Authenticate realm of the gateway's 401 answers.
	Realm string `json:"realm"`
	access.Status
}

// servePolicies serves GET /metrics_gateway/policies: the policies in force
// in each live gateway with access_policies, in the order they were
// provisioned (during a reload the old config's gateways are listed too, for
// a moment).
func servePolicies(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	type entry struct {
		seq uint64
		st  PoliciesStatus
	}
	var entries []entry
	live.Range(func(k, _ any) bool {
		g := k.(*Gateway)
		if g.access.guard == nil {
			return true
		}
		realm := g.AccessPolicies.Realm
		if realm == "" {
			realm = access.DefaultRealm
		}
		entries = append(entries, entry{g.access.seq, PoliciesStatus{Realm: realm, Status: g.access.guard.Status()}})
		return true
	})
	sort.Slice(entries, func(i, j int) bool { return entries[i].seq < entries[j].seq })
	out := make([]PoliciesStatus, len(entries))
	for i, e := range entries {
		out[i] = e.st
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(out)
}
