// Package zones checks the zone-aware Kubernetes example: one gateway
// Deployment per zone, each pod listing its own zone's distributors first.
package zones

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"go.yaml.in/yaml/v3"

	_ "github.com/metrics-gateway/metrics_gateway"
)

type object struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				Affinity struct {
					NodeAffinity struct {
						Required struct {
							Terms []struct {
								MatchExpressions []struct {
									Key string `yaml:"key"`
								} `yaml:"matchExpressions"`
							} `yaml:"nodeSelectorTerms"`
						} `yaml:"requiredDuringSchedulingIgnoredDuringExecution"`
					} `yaml:"nodeAffinity"`
				} `yaml:"affinity"`
				Containers []struct {
					Env []struct {
						Name      string `yaml:"name"`
						Value     string `yaml:"value"`
						ValueFrom *struct {
							FieldRef struct {
								FieldPath string `yaml:"fieldPath"`
							} `yaml:"fieldRef"`
						} `yaml:"valueFrom"`
					} `yaml:"env"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func load(t *testing.T) []object {
	f, err := os.Open("gateway-zones.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var objs []object
	dec := yaml.NewDecoder(f)
	for {
		var o object
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatal(err)
		}
		if o.Kind != "" {
			objs = append(objs, o)
		}
	}
}

// env resolves a container's environment as the kubelet would, the
// downward API's metadata.labels['x'] from the pod's labels.
func env(t *testing.T, o object) map[string]string {
	out := map[string]string{}
	labels := o.Spec.Template.Metadata.Labels
	for _, e := range o.Spec.Template.Spec.Containers[0].Env {
		switch {
		case e.ValueFrom == nil:
			out[e.Name] = e.Value
		case strings.HasPrefix(e.ValueFrom.FieldRef.FieldPath, "metadata.labels['"):
			key := strings.TrimSuffix(strings.TrimPrefix(e.ValueFrom.FieldRef.FieldPath, "metadata.labels['"), "']")
			v, ok := labels[key]
			if !ok {
				t.Errorf("%s: env %s reads label %q, which the pod does not have", o.Metadata.Name, e.Name, key)
			}
			out[e.Name] = v
		default:
			t.Errorf("%s: env %s: unexpected fieldPath %q", o.Metadata.Name, e.Name, e.ValueFrom.FieldRef.FieldPath)
		}
	}
	return out
}

// TestEachZoneFirst adapts the ConfigMap's Caddyfile with each Deployment's
// environment: its own zone is the first priority group, and all three
// zones are listed.
func TestEachZoneFirst(t *testing.T) {
	var caddyfile string
	var deployments []object
	for _, o := range load(t) {
		switch o.Kind {
		case "ConfigMap":
			caddyfile = o.Data["Caddyfile"]
		case "Deployment":
			deployments = append(deployments, o)
		}
	}
	if caddyfile == "" || len(deployments) != 3 {
		t.Fatalf("want a ConfigMap with a Caddyfile and 3 Deployments, got %d Deployments", len(deployments))
	}
	firsts := map[string]bool{}
	for _, d := range deployments {
		for k, v := range d.Spec.Selector.MatchLabels {
			if d.Spec.Template.Metadata.Labels[k] != v {
				t.Errorf("%s: selector %v does not match its pod labels", d.Metadata.Name, d.Spec.Selector.MatchLabels)
			}
		}
		terms := d.Spec.Template.Spec.Affinity.NodeAffinity.Required.Terms
		if len(terms) != 1 || len(terms[0].MatchExpressions) != 1 || terms[0].MatchExpressions[0].Key != "topology.kubernetes.io/zone" {
			t.Errorf("%s: not pinned to a zone by topology.kubernetes.io/zone", d.Metadata.Name)
		}
		vars := env(t, d)
		for k, v := range vars {
			t.Setenv(k, v)
		}
		raw, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
		if err != nil || len(warnings) > 0 {
			t.Fatalf("%s: adapt: %v %v", d.Metadata.Name, err, warnings)
		}
		var cfg any
		if err := json.Unmarshal(raw, &cfg); err != nil {
			t.Fatal(err)
		}
		gw := findGateway(cfg)
		if gw == nil {
			t.Fatalf("%s: no metrics_gateway handler in %s", d.Metadata.Name, raw)
		}
		url, _ := gw["proxy"].(map[string]any)["distributor"].(map[string]any)["url"].(string)
		targets := strings.Fields(url)
		own := "dns:///distributor-" + vars["ZONE"] + ".mimir.svc.cluster.local:9095"
		if len(targets) != 3 || targets[0] != own {
			t.Errorf("%s: distributor %q, want 3 zones, %s first", d.Metadata.Name, url, own)
		}
		firsts[targets[0]] = true
	}
	if len(firsts) != 3 {
		t.Errorf("the Deployments put %d distinct zones first, want 3", len(firsts))
	}
}

// findGateway finds the metrics_gateway handler in an adapted config.
func findGateway(v any) map[string]any {
	switch x := v.(type) {
	case map[string]any:
		if x["handler"] == "metrics_gateway" {
			return x
		}
		for _, c := range x {
			if g := findGateway(c); g != nil {
				return g
			}
		}
	case []any:
		for _, c := range x {
			if g := findGateway(c); g != nil {
				return g
			}
		}
	}
	return nil
}
