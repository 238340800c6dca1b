// Package kubernetes checks the Kubernetes example: the manifests parse,
// the names that must match do match, and the Caddyfile in the ConfigMap is
// a valid configuration of this module.
package kubernetes

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"go.yaml.in/yaml/v3"

	// The modules of the image the Dockerfile builds.
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/metrics-gateway/metrics_gateway"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
)

// The parts of the Kubernetes objects the checks read.
type (
	object struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name      string            `yaml:"name"`
			Namespace string            `yaml:"namespace"`
			Labels    map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
		Data map[string]string `yaml:"data"`
		Spec yaml.Node         `yaml:"spec"`
		file string
	}
	labelSelector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	}
	deploymentSpec struct {
		Replicas int           `yaml:"replicas"`
		Selector labelSelector `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	}
	podSpec struct {
		TerminationGracePeriodSeconds int         `yaml:"terminationGracePeriodSeconds"`
		Containers                    []container `yaml:"containers"`
		Volumes                       []struct {
			Name      string `yaml:"name"`
			ConfigMap *struct {
				Name string `yaml:"name"`
			} `yaml:"configMap"`
			EmptyDir *struct{} `yaml:"emptyDir"`
		} `yaml:"volumes"`
	}
	container struct {
		Name    string   `yaml:"name"`
		Image   string   `yaml:"image"`
		Command []string `yaml:"command"`
		Args    []string `yaml:"args"`
		Ports   []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		ReadinessProbe *probe `yaml:"readinessProbe"`
		LivenessProbe  *probe `yaml:"livenessProbe"`
		Resources      struct {
			Requests map[string]string `yaml:"requests"`
			Limits   map[string]string `yaml:"limits"`
		} `yaml:"resources"`
		VolumeMounts []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
		} `yaml:"volumeMounts"`
	}
	probe struct {
		HTTPGet *struct {
			Path string `yaml:"path"`
			Port string `yaml:"port"` // a number or a port name
		} `yaml:"httpGet"`
		PeriodSeconds    int `yaml:"periodSeconds"`
		TimeoutSeconds   int `yaml:"timeoutSeconds"`
		FailureThreshold int `yaml:"failureThreshold"`
	}
	serviceSpec struct {
		ClusterIP string            `yaml:"clusterIP"`
		Selector  map[string]string `yaml:"selector"`
		Ports     []servicePort     `yaml:"ports"`
	}
	servicePort struct {
		Name       string `yaml:"name"`
		Port       int    `yaml:"port"`
		TargetPort string `yaml:"targetPort"` // a number or a port name
	}
	pdbSpec struct {
		Selector labelSelector `yaml:"selector"`
	}
)

// apiVersions are the kinds the example may contain.
var apiVersions = map[string]string{
	"ConfigMap":           "v1",
	"Service":             "v1",
	"Deployment":          "apps/v1",
	"PodDisruptionBudget": "policy/v1",
	"ServiceMonitor":      "monitoring.coreos.com/v1",
}

// loadObjects parses every YAML document of every .yaml file here.
func loadObjects(t *testing.T) []object {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no YAML files (%v)", err)
	}
	var objs []object
	for _, f := range files {
		r, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(r)
		for i := 1; ; i++ {
			var o object
			err := dec.Decode(&o)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s, document %d: %v", f, i, err)
			}
			if o.Kind == "" && o.APIVersion == "" {
				continue // an empty document, e.g. before a leading ---
			}
			o.file = fmt.Sprintf("%s #%d", f, i)
			objs = append(objs, o)
		}
		r.Close()
	}
	return objs
}

func (o object) String() string { return o.Kind + "/" + o.Metadata.Name + " (" + o.file + ")" }

func decodeSpec[T any](t *testing.T, o object) T {
	t.Helper()
	var spec T
	if err := o.Spec.Decode(&spec); err != nil {
		t.Fatalf("%s: spec: %v", o, err)
	}
	return spec
}

// selects reports whether a selector picks pods with these labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// manifest is the example, parsed and cross-checked.
type manifest struct {
	objs       []object
	configMap  object
	caddyfile  string
	deployment deploymentSpec
	pod        podSpec
	gateway    container
	services   map[string]serviceSpec
}

func loadManifest(t *testing.T) *manifest {
	t.Helper()
	m := &manifest{objs: loadObjects(t), services: map[string]serviceSpec{}}
	seen := map[string]string{}
	var configMaps, deployments []object
	for _, o := range m.objs {
		want, ok := apiVersions[o.Kind]
		if !ok {
			t.Errorf("%s: unexpected kind (expected one of %v)", o, slices.Sorted(maps.Keys(apiVersions)))
			continue
		}
		if o.APIVersion != want {
			t.Errorf("%s: apiVersion %q, want %q", o, o.APIVersion, want)
		}
		if o.Metadata.Name == "" || o.Metadata.Namespace != "mimir" {
			t.Errorf("%s: name %q, namespace %q; want a name and namespace mimir", o, o.Metadata.Name, o.Metadata.Namespace)
		}
		key := o.Kind + "/" + o.Metadata.Name
		if prev, dup := seen[key]; dup {
			t.Errorf("%s: also defined in %s", o, prev)
		}
		seen[key] = o.file
		switch o.Kind {
		case "ConfigMap":
			configMaps = append(configMaps, o)
		case "Deployment":
			deployments = append(deployments, o)
		case "Service":
			m.services[o.Metadata.Name] = decodeSpec[serviceSpec](t, o)
		}
	}
	if len(configMaps) != 1 || len(deployments) != 1 {
		t.Fatalf("want one ConfigMap and one Deployment, got %d and %d", len(configMaps), len(deployments))
	}
	m.configMap = configMaps[0]
	m.caddyfile = m.configMap.Data["Caddyfile"]
	if m.caddyfile == "" {
		t.Fatalf("%s has no Caddyfile key", m.configMap)
	}
	m.deployment = decodeSpec[deploymentSpec](t, deployments[0])
	m.pod = m.deployment.Template.Spec
	if len(m.pod.Containers) != 1 {
		t.Fatalf("%s: want one container, got %d", deployments[0], len(m.pod.Containers))
	}
	m.gateway = m.pod.Containers[0]
	return m
}

// containerPort resolves a port given by name or number to the container's
// port number, or 0.
func (c container) containerPort(port string) int {
	for _, p := range c.Ports {
		if p.Name == port || strconv.Itoa(p.ContainerPort) == port {
			return p.ContainerPort
		}
	}
	return 0
}

func TestManifests(t *testing.T) {
	m := loadManifest(t)
	podLabels := m.deployment.Template.Metadata.Labels

	// The Deployment's selector picks its own pods.
	if !selects(m.deployment.Selector.MatchLabels, podLabels) {
		t.Errorf("Deployment selector %v does not match its pod labels %v", m.deployment.Selector.MatchLabels, podLabels)
	}
	if m.deployment.Replicas < 2 {
		t.Errorf("Deployment replicas = %d, want at least 2", m.deployment.Replicas)
	}

	// The config volume is the ConfigMap, mounted where caddy reads it.
	configVolume := ""
	for _, v := range m.pod.Volumes {
		if v.ConfigMap != nil {
			if v.ConfigMap.Name != m.configMap.Metadata.Name {
				t.Errorf("volume %s references ConfigMap %q, want %q", v.Name, v.ConfigMap.Name, m.configMap.Metadata.Name)
			}
			configVolume = v.Name
		}
	}
	if configVolume == "" {
		t.Fatal("no volume references the ConfigMap")
	}
	mounts := map[string]string{}
	for _, vm := range m.gateway.VolumeMounts {
		mounts[vm.Name] = vm.MountPath
	}
	for _, v := range m.pod.Volumes {
		if _, ok := mounts[v.Name]; !ok {
			t.Errorf("volume %s is not mounted", v.Name)
		}
	}
	wantConfig := mounts[configVolume] + "/Caddyfile"
	if cmd := strings.Join(append(m.gateway.Command, m.gateway.Args...), " "); !strings.HasPrefix(cmd, "caddy run ") ||
		!strings.Contains(cmd, "--config "+wantConfig) || !strings.Contains(cmd, "--adapter caddyfile") {
		t.Errorf("container runs %q, want caddy run --config %s --adapter caddyfile", cmd, wantConfig)
	}

	// Probes ask the gateway's /ready on a declared port.
	for name, p := range map[string]*probe{"readinessProbe": m.gateway.ReadinessProbe, "livenessProbe": m.gateway.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: missing or not an httpGet probe", name)
			continue
		}
		if p.HTTPGet.Path != "/ready" {
			t.Errorf("%s: path %q, want /ready", name, p.HTTPGet.Path)
		}
		if m.gateway.containerPort(p.HTTPGet.Port) == 0 {
			t.Errorf("%s: port %q is not a container port", name, p.HTTPGet.Port)
		}
	}

	// Resources.
	for _, r := range []string{"cpu", "memory"} {
		if m.gateway.Resources.Requests[r] == "" {
			t.Errorf("no %s request", r)
		}
	}
	if m.gateway.Resources.Limits["memory"] == "" {
		t.Error("no memory limit")
	}

	// Services that select the gateway's pods point at its ports; at least
	// one does.
	gatewayServices := 0
	for name, s := range m.services {
		if !selects(s.Selector, podLabels) {
			continue
		}
		gatewayServices++
		for _, p := range s.Ports {
			if m.gateway.containerPort(p.TargetPort) == 0 {
				t.Errorf("Service %s: targetPort %q is not a container port of the gateway", name, p.TargetPort)
			}
		}
	}
	if gatewayServices == 0 {
		t.Error("no Service selects the gateway's pods")
	}
	for _, o := range m.objs {
		switch o.Kind {
		case "PodDisruptionBudget":
			if spec := decodeSpec[pdbSpec](t, o); !selects(spec.Selector.MatchLabels, podLabels) {
				t.Errorf("%s: selector %v does not match the gateway's pods %v", o, spec.Selector.MatchLabels, podLabels)
			}
		case "ServiceMonitor":
			checkServiceMonitor(t, m, o)
		}
	}

	// The image is built by the Dockerfile next to the manifests.
	dockerfile, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"xcaddy build", "--with", "github.com/metrics-gateway/metrics_gateway", "FROM caddy:", "/usr/bin/caddy"} {
		if !strings.Contains(string(dockerfile), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

// adapted is the ConfigMap's Caddyfile adapted to Caddy's JSON.
type adapted struct {
	Admin struct {
		Listen string `json:"listen"`
	} `json:"admin"`
	Apps struct {
		HTTP struct {
			ShutdownDelay time.Duration `json:"shutdown_delay"`
			GracePeriod   time.Duration `json:"grace_period"`
			Servers       map[string]struct {
				Listen []string          `json:"listen"`
				Routes []json.RawMessage `json:"routes"`
			} `json:"servers"`
		} `json:"http"`
	} `json:"apps"`
}

// handlers returns every handler object of a config, nested ones included.
func handlers(v any) []map[string]any {
	var found []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if _, ok := v["handler"].(string); ok {
			found = append(found, v)
		}
		for _, child := range v {
			found = append(found, handlers(child)...)
		}
	case []any:
		for _, child := range v {
			found = append(found, handlers(child)...)
		}
	}
	return found
}

// serverPorts returns the listen port of the server running a handler.
func serverPorts(t *testing.T, cfg adapted, handler string) []int {
	t.Helper()
	var ports []int
	for name, s := range cfg.Apps.HTTP.Servers {
		var routes any
		raw, _ := json.Marshal(s.Routes)
		if err := json.Unmarshal(raw, &routes); err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(handlers(routes), func(h map[string]any) bool { return h["handler"] == handler }) {
			continue
		}
		for _, l := range s.Listen {
			_, port, err := net.SplitHostPort(l)
			p, perr := strconv.Atoi(port)
			if err != nil || perr != nil {
				t.Fatalf("server %s: listen %q: want :port", name, l)
			}
			ports = append(ports, p)
		}
	}
	return ports
}

func adaptCaddyfile(t *testing.T, caddyfile string) []byte {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "gateway.yaml: Caddyfile"})
	if err != nil {
		t.Fatalf("adapting the ConfigMap's Caddyfile: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("Caddyfile warning: %s", w)
	}
	return out
}

func TestCaddyfile(t *testing.T) {
	m := loadManifest(t)
	raw := adaptCaddyfile(t, m.caddyfile)
	var cfg adapted
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}

	// The admin API stays inside the pod.
	if host, _, err := net.SplitHostPort(cfg.Admin.Listen); err != nil || (host != "localhost" && !net.ParseIP(host).IsLoopback()) {
		t.Errorf("admin listens on %q, want localhost", cfg.Admin.Listen)
	}

	// The gateway and the metrics endpoint listen on the container's ports,
	// and the probes reach the gateway.
	gatewayPorts := serverPorts(t, cfg, "metrics_gateway")
	metricsPorts := serverPorts(t, cfg, "metrics")
	if len(gatewayPorts) != 1 || len(metricsPorts) != 1 {
		t.Fatalf("want one gateway and one metrics listener, got %v and %v", gatewayPorts, metricsPorts)
	}
	if gatewayPorts[0] == metricsPorts[0] {
		t.Errorf("the metrics endpoint shares the gateway's port %d", gatewayPorts[0])
	}
	for _, p := range append(gatewayPorts, metricsPorts...) {
		if m.gateway.containerPort(strconv.Itoa(p)) == 0 {
			t.Errorf("Caddy listens on %d, which is not a container port", p)
		}
	}
	for name, p := range map[string]*probe{"readiness": m.gateway.ReadinessProbe, "liveness": m.gateway.LivenessProbe} {
		// The metrics server answers /ready too (200, Caddy's empty
		// answer), so a probe there would never fail.
		if got := m.gateway.containerPort(p.HTTPGet.Port); got != gatewayPorts[0] {
			t.Errorf("the %s probe asks port %d, the gateway listens on %d", name, got, gatewayPorts[0])
		}
	}

	// Graceful drain: during shutdown_delay /ready answers 503, and the
	// readiness probe must fail within it, so that the pod leaves the
	// Service before the listener closes; the pod may take delay + grace.
	rp := m.gateway.ReadinessProbe
	if probeOut := time.Duration(rp.PeriodSeconds*rp.FailureThreshold+rp.TimeoutSeconds) * time.Second; cfg.Apps.HTTP.ShutdownDelay <= probeOut {
		t.Errorf("shutdown_delay %v: the readiness probe needs up to %v to take the pod out", cfg.Apps.HTTP.ShutdownDelay, probeOut)
	}
	if stop := cfg.Apps.HTTP.ShutdownDelay + cfg.Apps.HTTP.GracePeriod; cfg.Apps.HTTP.GracePeriod <= 0 ||
		time.Duration(m.pod.TerminationGracePeriodSeconds)*time.Second <= stop {
		t.Errorf("terminationGracePeriodSeconds %d, grace_period %v: want a grace period, and the pod's above shutdown_delay + grace_period (%v)",
			m.pod.TerminationGracePeriodSeconds, cfg.Apps.HTTP.GracePeriod, stop)
	}

	// The distributor backend is a dns:/// URL of the headless Service, on
	// the port that Service declares.
	var gw map[string]any
	var routes any
	if err := json.Unmarshal(raw, &routes); err != nil {
		t.Fatal(err)
	}
	for _, h := range handlers(routes) {
		if h["handler"] == "metrics_gateway" {
			gw = h
		}
	}
	// A push without X-Scope-OrgID (the README's remote_write sends none,
	// as through the chart's gateway, which fills in anonymous) must not
	// get 401, which Prometheus drops: the gateway needs a default tenant.
	if tenant, _ := gw["default_tenant"].(string); tenant == "" {
		t.Error("the gateway has no default_tenant: pushes without X-Scope-OrgID would get 401 from its gRPC backend")
	}
	proxy, _ := gw["proxy"].(map[string]any)
	dist, _ := proxy["distributor"].(map[string]any)
	rawURL, _ := dist["url"].(string)
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "dns" || u.Host != "" {
		t.Fatalf("distributor url %q, want dns:///<service>.<namespace>.svc.cluster.local:<port>", rawURL)
	}
	host, port, err := net.SplitHostPort(strings.TrimPrefix(u.Path, "/"))
	if err != nil {
		t.Fatalf("distributor url %q: %v", rawURL, err)
	}
	svcName, ns, ok := strings.Cut(strings.TrimSuffix(host, ".svc.cluster.local"), ".")
	if !ok || !strings.HasSuffix(host, ".svc.cluster.local") || ns != "mimir" {
		t.Fatalf("distributor url host %q, want <service>.mimir.svc.cluster.local", host)
	}
	svc, ok := m.services[svcName]
	if !ok {
		t.Fatalf("distributor url names Service %q, which the manifests do not define", svcName)
	}
	if svc.ClusterIP != "None" {
		t.Errorf("Service %s: clusterIP %q, want None (headless: its name must resolve to every pod)", svcName, svc.ClusterIP)
	}
	if !slices.ContainsFunc(svc.Ports, func(p servicePort) bool { return strconv.Itoa(p.Port) == port && p.Name == "grpc" }) {
		t.Errorf("Service %s has no grpc port %s (the port of %s)", svcName, port, rawURL)
	}
	if svc.Selector["app.kubernetes.io/component"] != "distributor" {
		t.Errorf("Service %s selects %v, want the distributors", svcName, svc.Selector)
	}

	// Every other backend is an HTTP Service of the same namespace.
	for component, b := range proxy {
		if component == "distributor" {
			continue
		}
		raw, _ := b.(map[string]any)["url"].(string)
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "http" || !strings.HasSuffix(u.Hostname(), ".mimir.svc.cluster.local") || u.Port() != "8080" {
			t.Errorf("%s: url %q, want http://<service>.mimir.svc.cluster.local:8080", component, raw)
		}
	}
}

// TestCaddyfileValidates provisions the ConfigMap's configuration with the
// modules the image contains (caddy.Validate: every module is set up, then
// cleaned up, and nothing listens). Provisioning a dns: backend starts its
// resolver, so the cluster name is looked up at a stand-in DNS server on
// loopback instead of the system's.
func TestCaddyfileValidates(t *testing.T) {
	m := loadManifest(t)
	raw := string(adaptCaddyfile(t, m.caddyfile))

	dns, err := standin.StartDNS()
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Stop()
	const name = "mimir-distributor-headless.mimir.svc.cluster.local"
	dns.SetA(name) // the name exists; no distributor is up

	target := `"dns:///` + name + `:`
	if strings.Count(raw, target) != 1 {
		t.Fatalf("the adapted config does not contain %s once", target)
	}
	raw = strings.Replace(raw, target, `"dns://`+dns.Addr()+`/`+name+`:`, 1)

	var cfg caddy.Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	// Quiet: the test's output is for failures.
	if cfg.Logging == nil {
		cfg.Logging = &caddy.Logging{Logs: map[string]*caddy.CustomLog{"default": {BaseLog: caddy.BaseLog{Level: "ERROR"}}}}
	}
	if err := caddy.Validate(&cfg); err != nil {
		t.Fatalf("caddy.Validate: %v", err)
	}
}

// checkServiceMonitor: the ServiceMonitor selects a Service of the gateway
// by its labels, scrapes /metrics on a port of it that reaches the
// metrics listener, and sets the job label the Mimir mixin matches.
func checkServiceMonitor(t *testing.T, m *manifest, o object) {
	t.Helper()
	spec := decodeSpec[struct {
		Selector  labelSelector `yaml:"selector"`
		Endpoints []struct {
			Port        string `yaml:"port"`
			Path        string `yaml:"path"`
			Relabelings []struct {
				TargetLabel string `yaml:"targetLabel"`
				Replacement string `yaml:"replacement"`
			} `yaml:"relabelings"`
		} `yaml:"endpoints"`
	}](t, o)
	if len(spec.Endpoints) != 1 {
		t.Fatalf("%s: want one endpoint", o)
	}
	ep := spec.Endpoints[0]
	scraped := 0
	for _, so := range m.objs {
		if so.Kind != "Service" || !selects(spec.Selector.MatchLabels, so.Metadata.Labels) {
			continue
		}
		for _, p := range m.services[so.Metadata.Name].Ports {
			if p.Name == ep.Port && m.gateway.containerPort(p.TargetPort) == m.gateway.containerPort("http-metrics") {
				scraped++
			}
		}
	}
	if scraped == 0 || ep.Path != "/metrics" {
		t.Errorf("%s: scrapes port %q path %q of no Service port reaching http-metrics", o, ep.Port, ep.Path)
	}
	job := ""
	for _, r := range ep.Relabelings {
		if r.TargetLabel == "job" {
			job = r.Replacement
		}
	}
	if job != o.Metadata.Namespace+"/gateway" {
		t.Errorf("%s: job label %q, want %s/gateway (the mixin's gateway rows)", o, job, o.Metadata.Namespace)
	}
}
