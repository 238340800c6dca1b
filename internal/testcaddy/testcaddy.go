// Package testcaddy runs a real Caddy, with its admin API and HTTP server on
// unix sockets in the test's temporary directory, so that tests bind no TCP
// port and packages can run in parallel. Caddy's state is process-wide: the
// tests that run one in the test process (Start, StartCaddyfile, StartJSON)
// take turns, while those that run it in a child process (StartProcess) do
// not wait.
package testcaddy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	// The standard modules, as in a real Caddy binary, and this plugin.
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/metrics-gateway/metrics_gateway/caddyfile"
	_ "github.com/metrics-gateway/metrics_gateway/caddymodule"
)

// Caddy is a running Caddy.
type Caddy struct {
	t         testing.TB
	Dir       string
	AdminSock string
	HTTPSock  string
	// AccessLog is the file access logs are written to (JSON lines).
	AccessLog string
	// Client sends requests to the HTTP server; any host name reaches it.
	Client *http.Client
	// Process is the child process of a Caddy started by StartProcess;
	// nil for one in the test process.
	Process *Process
	admin   *http.Client
	loaded  reloadTime
}

// Start loads a config whose single HTTP server runs the given handlers (a
// JSON array of handler objects) and stops Caddy when the test ends.
func Start(t testing.TB, handlers string) *Caddy {
	t.Helper()
	takeTurn(t)
	c := newCaddy(t)
	if err := caddy.Load(c.Config(handlers), true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
	return c
}

// StartCaddyfile adapts a Caddyfile, moves its admin endpoint, listeners and
// logs into the test's directory, and loads it.
func StartCaddyfile(t testing.TB, caddyfile string) *Caddy {
	t.Helper()
	takeTurn(t)
	c := newCaddy(t)
	cfg, err := c.Adapt(caddyfile)
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v", err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading adapted Caddyfile: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	return c
}

// StartJSON loads the full JSON config that config returns for the new
// Caddy's sockets and directory, for servers Config cannot describe (TLS,
// protocols), and stops Caddy when the test ends.
func StartJSON(t testing.TB, config func(c *Caddy) string) *Caddy {
	t.Helper()
	takeTurn(t)
	c := newCaddy(t)
	if err := caddy.Load([]byte(config(c)), true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	return c
}

func newCaddy(t testing.TB) *Caddy {
	// Unix socket paths are limited to ~100 bytes; t.TempDir() can be long.
	dir, err := os.MkdirTemp("", "mg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &Caddy{
		t:         t,
		Dir:       dir,
		AdminSock: filepath.Join(dir, "admin.sock"),
		HTTPSock:  filepath.Join(dir, "http.sock"),
		AccessLog: filepath.Join(dir, "access.log"),
	}
	c.Client = &http.Client{Transport: &reloadRetry{RoundTripper: UnixTransport(c.HTTPSock), loaded: &c.loaded}, Timeout: 60 * time.Second}
	// Caddy replaces its admin server on every load, so admin requests use
	// a fresh connection each.
	adminTransport := UnixTransport(c.AdminSock)
	adminTransport.DisableKeepAlives = true
	c.admin = &http.Client{Transport: adminTransport, Timeout: 60 * time.Second}
	return c
}

// UnixTransport is an HTTP/1.1 transport that dials the unix socket at path
// whatever the request's host.
func UnixTransport(path string) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConnsPerHost: 64,
	}
}

// Config returns a full Caddy JSON config with one HTTP server running
// handlers on the test's unix socket, access logs to c.AccessLog.
func (c *Caddy) Config(handlers string) []byte {
	return []byte(fmt.Sprintf(`{
		"admin": {"listen": "unix/%s", "config": {"persist": false}},
		"logging": {"logs": {
			"default": {"level": "WARN", "exclude": ["http.log.access"]},
			"access": {"writer": {"output": "file", "filename": %q}, "encoder": {"format": "json"}, "include": ["http.log.access"]}
		}},
		"apps": {"http": {"servers": {"gateway": {
			"listen": ["unix/%s"],
			"automatic_https": {"disable": true},
			"logs": {},
			"routes": [{"handle": %s}]
		}}}}
	}`, c.AdminSock, c.AccessLog, c.HTTPSock, handlers))
}

// Adapt turns a Caddyfile into JSON with the admin endpoint, every server's
// listeners and the logs moved into the test's directory.
func (c *Caddy) Adapt(caddyfile string) ([]byte, error) {
	adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		c.t.Logf("Caddyfile warning: %s", w)
	}
	var cfg map[string]any
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		return nil, err
	}
	base := map[string]any{}
	if err := json.Unmarshal(c.Config(`[]`), &base); err != nil {
		return nil, err
	}
	cfg["admin"] = base["admin"]
	cfg["logging"] = base["logging"]
	servers := dig(cfg, "apps", "http", "servers")
	for _, s := range servers {
		srv := s.(map[string]any)
		srv["listen"] = []any{"unix/" + c.HTTPSock}
		srv["automatic_https"] = map[string]any{"disable": true}
		srv["logs"] = map[string]any{}
	}
	return json.Marshal(cfg)
}

func dig(m map[string]any, keys ...string) map[string]any {
	for _, k := range keys {
		next, ok := m[k].(map[string]any)
		if !ok {
			return nil
		}
		m = next
	}
	return m
}

// Reload posts a new set of handlers to the admin API's /load, as an
// operator's config change would.
func (c *Caddy) Reload(handlers string) error {
	return c.Load(c.Config(handlers))
}

// Load posts a full JSON config to the admin API's /load.
func (c *Caddy) Load(cfg []byte) error { return c.load(cfg, false) }

// ForceReload posts the handlers' config with "Cache-Control:
// must-revalidate", as `caddy reload --force` does: Caddy reloads even an
// unchanged config (e.g. after certificate files were rewritten).
func (c *Caddy) ForceReload(handlers string) error { return c.load(c.Config(handlers), true) }

func (c *Caddy) load(cfg []byte, force bool) error {
	post := func() (*http.Response, error) {
		req, err := http.NewRequest(http.MethodPost, "http://localhost/load", bytes.NewReader(cfg))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		if force {
			req.Header.Set("Cache-Control", "must-revalidate")
		}
		return c.admin.Do(req)
	}
	resp, err := post()
	for try := 0; err != nil && try < 5; try++ {
		// Caddy replaces its admin server on every load too: a request
		// that reaches the old one as it stops is closed unread (Go's
		// net/http). Loading the same config again is harmless.
		resp, err = post()
	}
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /load: %s: %s", resp.Status, body)
	}
	// Idle connections belong to the old server, which is closing them.
	c.Client.CloseIdleConnections()
	c.loaded.now()
	return nil
}

// AdminGet fetches a path of the admin API.
func (c *Caddy) AdminGet(path string) (int, []byte, error) {
	resp, err := c.admin.Get("http://localhost" + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// Get sends a GET to the HTTP server.
func (c *Caddy) Get(path string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, "http://gateway"+path, nil)
	if err != nil {
		return nil, nil, err
	}
	return c.Do(req)
}

// Do sends a request to the HTTP server and reads the whole response.
func (c *Caddy) Do(req *http.Request) (*http.Response, []byte, error) {
	resp, err := c.Client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}
