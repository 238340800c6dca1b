package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// The systems under test.
const (
	sysDirect    = "direct"        // wrk -> one stand-in's HTTP port (the floor)
	sysPinned    = "direct-pinned" // balance run only: each connection pinned to one stand-in
	sysNginx     = "nginx"         // helm-chart push routing, upstream block with keepalive
	sysNginxHelm = "nginx-helm"    // helm chart as shipped: resolver + variable proxy_pass
	sysCaddy     = "caddy-rp"      // Caddy reverse_proxy, dynamic a + round_robin
	sysGateway   = "gateway"       // metrics_gateway, dns:// -> httpgrpc
	// sysGatewayBase is gateway's configuration run by another build
	// (-caddy-base), to compare two commits in one run.
	sysGatewayBase = "gateway-base"
	// The sick phase's systems (bench/sick.go).
	sysGatewayLC     = "gateway-lc"      // metrics_gateway, lb_policy least_conn
	sysGatewayHealth = "gateway-health"  // least_conn + passive health checks
	sysNginxHealth   = "nginx-health"    // nginx least_conn + max_fails + proxy_next_upstream
	sysCaddyLC       = "caddy-lc"        // Caddy reverse_proxy, lb_policy least_conn
	sysCaddyHealth   = "caddy-lc-health" // least_conn + Caddy's passive health checks
	// The mirror phase's systems (bench/mirror.go): the gateway with a
	// mirror that works, that never answers in time, that refuses
	// connections.
	sysGatewayMirror     = "gateway-mirror"
	sysGatewayMirrorHung = "gateway-mirror-hung"
	sysGatewayMirrorDown = "gateway-mirror-down"
	// sysGatewayMirrorDownR0 is gateway-mirror-down with `retries 0` in
	// the mirror block: a failed copy is not tried again.
	sysGatewayMirrorDownR0 = "gateway-mirror-down-r0"
	// sysGatewayPolicies is the gateway with access_policies (1001
	// policies), pushed to with Basic credentials (bench/mirror.go).
	sysGatewayPolicies = "gateway-policies"
)

// blockLines are the extra lines of each Caddy-based system's backend
// block; the passive health systems add the scenario's env.passiveHealth.
var blockLines = map[string]string{
	sysGateway:       "",
	sysGatewayBase:   "",
	sysGatewayLC:     "lb_policy least_conn",
	sysGatewayHealth: "lb_policy least_conn",
	sysCaddy:         "lb_policy round_robin",
	sysCaddyLC:       "lb_policy least_conn",
	sysCaddyHealth:   "lb_policy least_conn",
	// The mirror and policies systems add lines of their own (extraLines).
	sysGatewayMirror:       "",
	sysGatewayMirrorHung:   "",
	sysGatewayMirrorDown:   "",
	sysGatewayMirrorDownR0: "",
	sysGatewayPolicies:     "",
}

var allSystems = []string{sysDirect, sysNginx, sysNginxHelm, sysCaddy, sysGateway}

// env is what every system needs to know about the bench.
type env struct {
	cfg       *config
	info      standinsInfo
	dir       string // scratch directory for configs and logs
	luaPath   string
	bodyPaths map[int]string // samples per body -> file
	bodyBytes map[int][]byte
	work      string // the stand-ins' current work mode
	// standinsPID is the stand-ins process (taskset execs it: same pid).
	standinsPID int
	// mirror and mirrorPID are the mirror phase's second stand-ins process,
	// with the mirror clusters and a DNS server of their own.
	mirror    standinsInfo
	mirrorPID int
	// passiveHealth are the passive health lines of the sick scenario
	// running, the same words for metrics_gateway and reverse_proxy.
	passiveHealth string
	// policies is gateway-policies' access_policies block and auth the
	// Authorization header its clients send (made once per run).
	policies, auth string
}

// running is a started system under test.
type running struct {
	name      string
	url       string // push URL the load generator targets
	pid       int    // root of the process tree to measure; 0 for direct
	cmd       *exec.Cmd
	adminAddr string // Caddy admin (pprof), if any
	logPath   string
	auth      string // the Authorization header pushes need, if any
}

// freePort asks the kernel for an unused loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startSystem starts one system pinned to the proxy CPU and waits until a
// push goes through it.
func (e *env) startSystem(ctx context.Context, name string, body []byte) (*running, error) {
	if name == sysDirect {
		return &running{name: name, url: fmt.Sprintf("http://%s:%d/api/v1/push", e.info.IPs[0], e.info.HTTPPort)}, nil
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.dir, fmt.Sprintf("%s-%d", name, port))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// nginx workers run as nobody and need to traverse to their temp dirs.
	_ = os.Chmod(e.dir, 0o755)
	r := &running{name: name, url: fmt.Sprintf("http://127.0.0.1:%d/api/v1/push", port), logPath: filepath.Join(dir, "stderr.log")}
	data := tmplData{
		Dir: dir, Port: port, DNS: e.info.DNS, Name: dnsName, IPs: e.info.IPs,
		HTTPPort: e.info.HTTPPort, GRPCPort: e.info.GRPCPort,
	}
	var args []string
	cmdEnv := os.Environ()
	switch name {
	case sysNginx, sysNginxHelm, sysNginxHealth:
		tmpl := nginxUpstreamConf
		if name == sysNginxHelm {
			tmpl = nginxHelmConf
		}
		data.Health = name == sysNginxHealth
		conf := filepath.Join(dir, "nginx.conf")
		if err := writeTemplate(conf, tmpl, data); err != nil {
			return nil, err
		}
		args = []string{e.cfg.nginx, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log")}
	case sysCaddy, sysGateway, sysGatewayBase, sysGatewayLC, sysGatewayHealth, sysCaddyLC, sysCaddyHealth,
		sysGatewayMirror, sysGatewayMirrorHung, sysGatewayMirrorDown, sysGatewayMirrorDownR0, sysGatewayPolicies:
		data.Block = blockLines[name]
		data.Extra, data.NoDefaultTenant = e.extraLines(name)
		if name == sysGatewayPolicies {
			r.auth = e.auth
		}
		if name == sysGatewayHealth || name == sysCaddyHealth {
			data.Block += e.passiveHealth
		}
		admin, err := freePort()
		if err != nil {
			return nil, err
		}
		data.Admin = admin
		r.adminAddr = fmt.Sprintf("127.0.0.1:%d", admin)
		tmpl := caddyReverseProxyConf
		if strings.HasPrefix(name, sysGateway) {
			tmpl = gatewayConf
		}
		conf := filepath.Join(dir, "Caddyfile")
		if err := writeTemplate(conf, tmpl, data); err != nil {
			return nil, err
		}
		bin := e.cfg.caddy
		if name == sysGatewayBase {
			bin = e.cfg.caddyBase
		}
		args = []string{bin, "run", "--adapter", "caddyfile", "--config", conf}
		// Keep Caddy's state out of the user's home directory.
		cmdEnv = append(cmdEnv, "XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	default:
		return nil, fmt.Errorf("unknown system %q", name)
	}
	logf, err := os.Create(r.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("taskset", append([]string{"-c", strconv.Itoa(e.cfg.proxyCPU)}, args...)...)
	cmd.Env = cmdEnv
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r.cmd = cmd
	r.pid = cmd.Process.Pid // taskset execs the program: same pid
	if err := waitReady(ctx, r, body, 30*time.Second); err != nil {
		r.stop()
		return nil, fmt.Errorf("%s did not become ready: %w (log: %s)", name, err, tail(r.logPath, 2000))
	}
	return r, nil
}

// waitReady sends pushes until one is answered 200.
func waitReady(ctx context.Context, r *running, body []byte, limit time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(limit)
	var lastErr error
	for time.Now().Before(deadline) {
		if r.cmd != nil && r.cmd.ProcessState != nil {
			return errors.New("process exited")
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
		setPushHeaders(req.Header, r.auth)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return lastErr
}

// setPushHeaders sets a push's headers as push.lua does: the tenant in
// X-Scope-OrgID, or, given an Authorization header, that instead (a Basic
// username names the tenant).
func setPushHeaders(h http.Header, auth string) {
	h.Set("Content-Type", "application/x-protobuf")
	h.Set("Content-Encoding", "snappy")
	h.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	if auth != "" {
		h.Set("Authorization", auth)
	} else {
		h.Set("X-Scope-OrgID", benchTenant)
	}
}

// benchTenant is the tenant every push is for.
const benchTenant = "bench"

// stop ends the system's process group: SIGTERM, then SIGKILL after 5 s.
func (r *running) stop() {
	if r == nil || r.cmd == nil || r.cmd.Process == nil {
		return
	}
	pgid := r.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

type tmplData struct {
	Dir                string
	Port, Admin        int
	DNS, Name          string
	IPs                []string
	HTTPPort, GRPCPort int
	Block              string // extra lines of the backend block
	// Extra are lines of the metrics_gateway block (mirror,
	// access_policies); NoDefaultTenant leaves out default_tenant, which
	// access_policies refuses.
	Extra           string
	NoDefaultTenant bool
	// Health turns on nginx's passive health checks and retries.
	Health bool
}

func writeTemplate(path, tmpl string, data tmplData) error {
	t, err := template.New(filepath.Base(path)).Parse(tmpl)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// nginxCommon is the http{} preamble of the mimir-distributed helm chart's
// gateway nginx.conf (temp paths, access log of non-2xx/3xx only, the
// tenant map), with worker_processes 1 because nginx gets one core.
const nginxCommon = `worker_processes 1;
daemon off;
master_process on;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;
worker_rlimit_nofile 8192;
events { worker_connections 4096; }
http {
  client_body_temp_path {{.Dir}}/client_temp;
  proxy_temp_path       {{.Dir}}/proxy_temp;
  fastcgi_temp_path     {{.Dir}}/fastcgi_temp;
  uwsgi_temp_path       {{.Dir}}/uwsgi_temp;
  scgi_temp_path        {{.Dir}}/scgi_temp;
  default_type application/octet-stream;
  log_format main '$remote_addr - $remote_user [$time_local] $status "$request" $body_bytes_sent';
  map $status $loggable { ~^[23] 0; default 1; }
  access_log {{.Dir}}/access.log main if=$loggable;
  sendfile on;
  tcp_nopush on;
  proxy_http_version 1.1;
  client_max_body_size 540M;
  proxy_read_timeout 300;
  map $http_x_scope_orgid $ensured_x_scope_orgid {
    default $http_x_scope_orgid;
    "" "anonymous";
  }
`

// nginxUpstreamConf: what a careful operator runs — the chart's push
// location, but a static upstream block with keepalive and a body buffer
// large enough that nginx never spools a push to disk (see
// BENCHMARKING notes: without it, keepalive stalls ~40 ms per request).
// With .Health, nginx at its best with a sick upstream: least_conn, passive
// health (max_fails/fail_timeout, which count what proxy_next_upstream
// names) and the failed request retried on the next server, POST included.
const nginxUpstreamConf = nginxCommon + `  client_body_buffer_size 1m;
  upstream distributors {
{{- if .Health}}
    least_conn;
{{- end}}
{{- range .IPs}}
    server {{.}}:{{$.HTTPPort}}{{if $.Health}} max_fails=3 fail_timeout=5s{{end}};
{{- end}}
    keepalive 256;
  }
  server {
    listen 127.0.0.1:{{.Port}};
    location = / { return 200 'OK'; }
    location = /api/v1/push {
      proxy_set_header X-Scope-OrgID $ensured_x_scope_orgid;
      proxy_set_header Connection "";
{{- if .Health}}
      proxy_next_upstream error timeout http_503 non_idempotent;
{{- end}}
      proxy_pass http://distributors;
    }
  }
}
`

// nginxHelmConf: the chart's push routing as shipped — resolver plus a
// variable in proxy_pass, so every request opens a new upstream connection.
const nginxHelmConf = nginxCommon + `  resolver {{.DNS}} valid=5s ipv6=off;
  server {
    listen 127.0.0.1:{{.Port}};
    location = / { return 200 'OK'; }
    proxy_set_header X-Scope-OrgID $ensured_x_scope_orgid;
    location = /api/v1/push {
      set $distributor {{.Name}};
      proxy_pass http://$distributor:{{.HTTPPort}}$request_uri;
    }
  }
}
`

// caddyReverseProxyConf: plain Caddy reverse_proxy on the headless name.
const caddyReverseProxyConf = `{
	admin 127.0.0.1:{{.Admin}}
	persist_config off
}
:{{.Port}} {
	bind 127.0.0.1
	reverse_proxy /api/v1/push {
		dynamic a {{.Name}} {{.HTTPPort}} {
			resolvers {{.DNS}}
			refresh 5s
		}
		{{.Block}}
		transport http {
			keepalive_idle_conns_per_host 256
		}
	}
}
`

// gatewayConf: metrics_gateway with the distributors' gRPC port.
const gatewayConf = `{
	admin 127.0.0.1:{{.Admin}}
	persist_config off
}
:{{.Port}} {
	bind 127.0.0.1
	metrics_gateway {
		proxy {
			default     http://127.0.0.1:1
			distributor dns://{{.DNS}}/{{.Name}}:{{.GRPCPort}} {
				refresh 5s
				{{.Block}}
			}
		}
{{- if not .NoDefaultTenant}}
		default_tenant bench
{{- end}}
{{- if .Extra}}
{{.Extra}}
{{- end}}
	}
}
`
