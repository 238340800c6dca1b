package grpcpush

import "testing"

func TestParseTarget(t *testing.T) {
	good := []struct {
		in        string
		authority string
		host      string
		port      string
		canonical string
		ip        bool
	}{
		{"dns:///distributor:9095", "", "distributor", "9095", "dns:///distributor:9095", false},
		{"dns:///distributor.mimir.svc.cluster.local:9095", "", "distributor.mimir.svc.cluster.local", "9095", "dns:///distributor.mimir.svc.cluster.local:9095", false},
		{"dns://10.0.0.10:5353/distributor:9095", "10.0.0.10:5353", "distributor", "9095", "dns://10.0.0.10:5353/distributor:9095", false},
		{"dns://10.0.0.10/distributor:9095", "10.0.0.10:53", "distributor", "9095", "dns://10.0.0.10:53/distributor:9095", false},
		{"dns://[fd00::a]/d:9095", "[fd00::a]:53", "d", "9095", "dns://[fd00::a]:53/d:9095", false},
		{"dns://[fd00::a]:5353/d:9095", "[fd00::a]:5353", "d", "9095", "dns://[fd00::a]:5353/d:9095", false},
		{"dns://kube-dns.kube-system/d:1", "kube-dns.kube-system:53", "d", "1", "dns://kube-dns.kube-system:53/d:1", false},
		{"dns:///10.1.2.3:9095", "", "10.1.2.3", "9095", "dns:///10.1.2.3:9095", true},
		{"dns:///[::1]:9095", "", "::1", "9095", "dns:///[::1]:9095", true},
	}
	for _, tc := range good {
		got, err := ParseTarget(tc.in)
		if err != nil {
			t.Errorf("ParseTarget(%q): %v", tc.in, err)
			continue
		}
		want := Target{Authority: tc.authority, Host: tc.host, Port: tc.port}
		if got != want || got.String() != tc.canonical || got.IsIP() != tc.ip {
			t.Errorf("ParseTarget(%q) = %+v (%s, ip %v), want %+v (%s, ip %v)", tc.in, got, got, got.IsIP(), want, tc.canonical, tc.ip)
		}
	}

	bad := []struct{ in, err string }{
		{"", `target "" has no scheme: want dns:///host:port`},
		{"distributor:9095", `target "distributor:9095" has no scheme: want dns:///host:port`},
		{"http://distributor:8080", `target "http://distributor:8080": unsupported scheme "http": want dns:///host:port`},
		{"kubernetes:///distributor:9095", `target "kubernetes:///distributor:9095": unsupported scheme "kubernetes": want dns:///host:port`},
		{"dns:distributor:9095", `target "dns:distributor:9095": want dns:///host:port or dns://authority/host:port`},
		{"dns:/distributor:9095", `target "dns:/distributor:9095": want dns:///host:port or dns://authority/host:port`},
		{"dns://distributor:9095", `target "dns://distributor:9095": no host:port after the authority "distributor:9095" (did you mean dns:///distributor:9095?)`},
		{"dns:///", `target "dns:///": missing host:port`},
		{"dns:///distributor", `target "dns:///distributor": missing port in "distributor" (want host:port)`},
		{"dns:///distributor:", `target "dns:///distributor:": missing port in "distributor:" (want host:port)`},
		{"dns:///:9095", `target "dns:///:9095": missing host in ":9095"`},
		{"dns:///d:0", `target "dns:///d:0": invalid port "0" (want 1-65535)`},
		{"dns:///d:65536", `target "dns:///d:65536": invalid port "65536" (want 1-65535)`},
		{"dns:///d:grpc", `target "dns:///d:grpc": invalid port "grpc" (want 1-65535)`},
		{"dns:///a/b:9095", `target "dns:///a/b:9095": "a/b:9095" is not host:port`},
		{"dns:///d:9095?x=1", `target "dns:///d:9095?x=1": "d:9095?x=1" is not host:port`},
		{"dns:///fd00::1:9095", `target "dns:///fd00::1:9095": "fd00::1:9095" is not host:port: too many colons in address`},
		{"dns:///[mimir]:9095", `target "dns:///[mimir]:9095": "mimir" in brackets is not an IPv6 address`},
		{"dns://:53/d:9095", `target "dns://:53/d:9095": invalid DNS server ":53": missing host`},
		{"dns://1.2.3.4:dns/d:9095", `target "dns://1.2.3.4:dns/d:9095": invalid DNS server "1.2.3.4:dns": invalid port "dns" (want 1-65535)`},
		{"dns://fd00::a/d:9095", `target "dns://fd00::a/d:9095": invalid DNS server "fd00::a" (want host or host:port)`},
		// User info is refused, and the error does not quote it.
		{"dns://user:s3cret@8.8.8.8/d:9095", `target "dns://8.8.8.8/d:9095": user info ("user@") has no place in a dns: target`},
		{"dns:///us3r@d:9095", `target "dns://d:9095": user info ("user@") has no place in a dns: target`},
	}
	for _, tc := range bad {
		_, err := ParseTarget(tc.in)
		if err == nil || err.Error() != tc.err {
			t.Errorf("ParseTarget(%q) error:\n got  %v\n want %s", tc.in, err, tc.err)
		}
	}
}

func TestOptionsValidation(t *testing.T) {
	cases := []struct {
		o   Options
		err string
	}{
		{Options{Target: "dns:///d"}, `target "dns:///d": missing port in "d" (want host:port)`},
		{Options{Target: "dns:///d:1", Retries: Ptr(5)}, "retries 5: must be 0-4 (gRPC allows at most 5 attempts)"},
		{Options{Target: "dns:///d:1", Retries: Ptr(-1)}, "retries -1: must be 0-4 (gRPC allows at most 5 attempts)"},
		{Options{Target: "dns:///d:1", KeepaliveTime: 5e9}, "keepalive time 5s: must be at least 10s (Mimir's server closes connections that ping more often)"},
		{Options{Target: "dns:///d:1", Compression: "snappy"}, `compression "snappy": must be gzip or none`},
		{Options{Target: "dns:///d:1", Refresh: 1e6}, "refresh 1ms: must be at least 10ms"},
		{Options{Target: "dns:///d:1", Timeout: -1}, "timeout -1ns: must be positive"},
		{Options{Target: "dns:///d:1", MaxRequestBody: -1}, "max_request_body -1: must be 1 byte to 2 GiB-1 MiB"},
		{Options{Target: "dns:///d:1", TLS: &TLSOptions{CertFile: "c.pem"}}, "tls: cert and key must be given together"},
	}
	for _, tc := range cases {
		_, err := tc.o.settings()
		if err == nil || err.Error() != tc.err {
			t.Errorf("%+v:\n got  %v\n want %s", tc.o, err, tc.err)
		}
	}
	s, err := Options{Target: "dns:///d:1"}.settings()
	if err != nil {
		t.Fatal(err)
	}
	if s.refresh != DefaultRefresh || s.timeout != DefaultTimeout || s.retries != DefaultRetries ||
		s.maxBody != DefaultMaxRequestBody || s.keepaliveTime != DefaultKeepaliveTime ||
		s.keepaliveTimeout != DefaultKeepaliveTimeout || s.backend != DefaultBackendName {
		t.Errorf("defaults not applied: %+v", s)
	}
	if s, _ := (Options{Target: "dns:///d:1", Retries: Ptr(0)}).settings(); s.retries != 0 {
		t.Errorf("Retries: Ptr(0) gave %d retries", s.retries)
	}
	// "none", as the Caddyfile and the error above spell it, is no
	// compression in JSON too.
	if s, err := (Options{Target: "dns:///d:1", Compression: "none"}).settings(); err != nil || s.compression != "" {
		t.Errorf(`Compression "none": %q, %v`, s.compression, err)
	}
}

func TestOptionsKey(t *testing.T) {
	a, err := Options{Target: "dns://10.0.0.1/d:9095"}.Key()
	if err != nil {
		t.Fatal(err)
	}
	same, _ := Options{Target: "dns://10.0.0.1:53/d:9095", Refresh: DefaultRefresh, Retries: Ptr(DefaultRetries)}.Key()
	if a != same {
		t.Errorf("equivalent options differ:\n%s\n%s", a, same)
	}
	// A Handler shared by configurations serves each with the Budget it
	// brings (PriorityOptions.Budget): a new max_buffered_bytes must not
	// give new connections.
	if k, _ := (Options{Target: "dns://10.0.0.1/d:9095", MaxBufferedBytes: 1 << 30}).Key(); k != a {
		t.Errorf("max_buffered_bytes changes the key:\n%s\n%s", a, k)
	}
	for _, o := range []Options{
		{Target: "dns://10.0.0.1/d:9096"},
		{Target: "dns://10.0.0.1/d:9095", Retries: Ptr(0)},
		{Target: "dns://10.0.0.1/d:9095", Compression: "gzip"},
		{Target: "dns://10.0.0.1/d:9095", TLS: &TLSOptions{}},
		{Target: "dns://10.0.0.1/d:9095", Timeout: 5e9},
	} {
		if k, _ := o.Key(); k == a {
			t.Errorf("%+v has the default key", o)
		}
	}
	if _, err := (Options{Target: "x"}).Key(); err == nil {
		t.Error("Key of an invalid target")
	}
}
