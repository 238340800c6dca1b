package caddymodule

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/metrics-gateway/metrics_gateway/access"
)

// TestAccessTokenCommands: `caddy metrics-gateway token` prints a new
// token and its hash; `hash-token` gives the same hash for the token; a
// policy holding the hash accepts the token.
func TestAccessTokenCommands(t *testing.T) {
	t.Parallel()
	cmd, ok := caddycmd.Commands()["metrics-gateway"]
	if !ok || cmd.Func == nil {
		t.Fatal("the metrics-gateway command is not registered with Caddy")
	}

	var out bytes.Buffer
	if code, err := runMetricsGateway([]string{"token"}, strings.NewReader(""), &out); code != 0 || err != nil {
		t.Fatalf("token: %d %v", code, err)
	}
	lines := strings.Split(out.String(), "\n")
	if len(lines) != 3 || lines[2] != "" {
		t.Fatalf("token printed %q, want two lines", out.String())
	}
	token, hash := lines[0], lines[1]
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(raw) < 32 {
		t.Fatalf("token %q: %d bytes of entropy (%v), want at least 32, base64url", token, len(raw), err)
	}
	if hash != access.HashToken(token) {
		t.Fatalf("hash %q is not the token's", hash)
	}
	out.Reset()
	runMetricsGateway([]string{"token"}, nil, &out)
	if strings.HasPrefix(out.String(), token) {
		t.Fatal("two runs made the same token")
	}

	for _, in := range []string{token, token + "\n", "  " + token + "\r\n", token + "\nignored second line\n"} {
		out.Reset()
		if code, err := runMetricsGateway([]string{"hash-token"}, strings.NewReader(in), &out); code != 0 || err != nil {
			t.Fatalf("hash-token: %d %v", code, err)
		}
		if out.String() != hash+"\n" {
			t.Errorf("hash-token of %q printed %q, want %q", in, out.String(), hash)
		}
	}

	// The round trip: a policy with the printed hash takes the token.
	g, err := access.New(access.Config{Policies: []access.Policy{{
		Name: "p", Tenants: []string{"team-a"}, Scopes: []string{"metrics:write"}, Tokens: []access.Token{{Hash: hash}},
	}}}, access.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	r := httptest.NewRequest(http.MethodPost, "/api/v1/push", nil)
	r.SetBasicAuth("team-a", token)
	if d := g.Decide(r, access.ScopeMetricsWrite); !d.Allowed() {
		t.Errorf("the policy refuses the token: %+v", d)
	}

	for _, c := range []struct {
		args  []string
		stdin string
		code  int
		err   string
	}{
		{nil, "", exitUsage, "usage: caddy metrics-gateway token | hash-token"},
		{[]string{"tokens"}, "", exitUsage, `unknown subcommand "tokens"`},
		{[]string{"token", "extra"}, "", exitUsage, "usage:"},
		{[]string{"hash-token"}, "", 1, "no token on standard input"},
		{[]string{"hash-token"}, " \n", 1, "the token on standard input is empty"},
		{[]string{"hash-token"}, strings.Repeat("x", maxTokenLine+1), 1, "reading the token from standard input: bufio.Scanner: token too long"},
	} {
		out.Reset()
		code, err := runMetricsGateway(c.args, strings.NewReader(c.stdin), &out)
		if code != c.code || err == nil || !strings.Contains(err.Error(), c.err) || out.Len() != 0 {
			t.Errorf("%q: %d %v %q, want %d %q", c.args, code, err, out.String(), c.code, c.err)
		}
	}
}
