package caddymodule

import (
	"slices"
	"strings"
	"testing"
)

// TestParseBackendURLWithoutScheme: an HTTP backend written without a
// scheme is http://, as Caddy's reverse_proxy reads an upstream address.
func TestParseBackendURLWithoutScheme(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw   string
		dials []string
	}{
		{"127.0.0.1:8080", []string{"127.0.0.1:8080"}},
		{"localhost:8080", []string{"localhost:8080"}},
		{"mimir", []string{"mimir:80"}},
		{"[::1]:9009", []string{"[::1]:9009"}},
		{"qf-1:8080 qf-2:8080", []string{"qf-1:8080", "qf-2:8080"}},
		{"qf-1:8080 http://qf-2:8080", []string{"qf-1:8080", "qf-2:8080"}},
		{"mimir:8080/", []string{"mimir:8080"}},
	} {
		u, err := ParseBackendURL(tc.raw)
		if err != nil {
			t.Errorf("%q: %v", tc.raw, err)
			continue
		}
		if u.Kind != KindHTTP || u.Scheme != "http" || !slices.Equal(u.Dials, tc.dials) {
			t.Errorf("%q: got %s %s %v, want http http %v", tc.raw, u.Kind, u.Scheme, u.Dials, tc.dials)
		}
	}
}

// TestParseBackendURLErrors: what a URL cannot be, with or without a
// scheme; the message quotes the URL as written, but for a password in it.
func TestParseBackendURLErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ raw, want string }{
		{":8080", `":8080" has no host`},
		{"mimir:8080/api", `"mimir:8080/api": a backend URL is scheme://host[:port] only`},
		{"mimir:0", `"mimir:0": invalid port "0"`},
		{"mimir:99999", `"mimir:99999": invalid port "99999"`},
		{"user:pw@mimir:8080", `"user:xxxxx@mimir:8080": credentials in backend URLs are not supported`},
		{"https://user:pw@mimir:8080/api", `"https://user:xxxxx@mimir:8080/api": a backend URL is scheme://host[:port] only`},
		{"ftp://user:pw@mimir", `"ftp://user:xxxxx@mimir": unsupported scheme "ftp"`},
		{"http://user:pw%zz@mimir:8080", `"http://user:xxxxx@mimir:8080" is not a URL`},
		{"http://user:pw@mimir:0", `"http://user:xxxxx@mimir:0": credentials in backend URLs`},
		{"http://user:pw/ss@mimir:8080", `"http://user:xxxxx@mimir:8080" is not a URL`},
		{"http://user:pw?ss@mimir:8080", `"http://user:xxxxx@mimir:8080"`},
		{"http://user:pw#ss@mimir:8080", `"http://user:xxxxx@mimir:8080"`},
		{"mimir:http", `"mimir:http" is not a URL: invalid port ":http" after host`},
		{"%zz", `"%zz" is not a URL: invalid URL escape "%zz"`},
		{"mimir:8080 https://b:8443", `"https://b:8443": all URLs of one backend must use the same scheme (http:// and https:// mixed)`},
		{"mimir:8080 dns:///d:9095", `"dns:///d:9095": dns: and HTTP URLs cannot be mixed in one backend`},
		{"ftp://mimir:21", `"ftp://mimir:21": unsupported scheme "ftp"`},
	} {
		_, err := ParseBackendURL(tc.raw)
		if err == nil {
			t.Errorf("%q accepted", tc.raw)
			continue
		}
		msg := err.Error()
		leaked := strings.Contains(msg, "pw") ||
			strings.Contains(tc.raw, "@") && (strings.Contains(msg, "ss") || strings.Contains(msg, "zz"))
		if !strings.Contains(msg, tc.want) || leaked {
			t.Errorf("%q: got %v, want an error containing %q (and no password)", tc.raw, err, tc.want)
		}
	}
}

// TestURLErrorsHidePasswords: however a URL with a password is wrong, the
// error quotes no piece of the password (config errors reach the admin
// API's answers and logs).
func TestURLErrorsHidePasswords(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		"dns:///mimir:9095 http://admin:hunter2@mimir:8080",
		"http://mimir:8080 dns://admin:hunter2@10.0.0.1/mimir:9095",
		"dns:admin:hunter2@mimir:9095",
		"admin:hun://ter2@mimir:8080",
		"http://admin:hunter2 x@mimir:8080",
		"http://admin:hunter2@mimir:8080/path",
		"http://admin:hunter2@mimir:99999",
	} {
		_, err := ParseBackendURL(raw)
		if err == nil {
			t.Errorf("%q accepted", raw)
			continue
		}
		if strings.Contains(err.Error(), "hunter") || strings.Contains(err.Error(), "ter2") {
			t.Errorf("%q: the error shows the password: %v", raw, err)
		}
	}
}
