package caddymodule_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/metrics-gateway/metrics_gateway/internal/standin"
	"github.com/metrics-gateway/metrics_gateway/internal/testcaddy"
	"time"
)

// scrape returns the admin /metrics exposition.
func scrape(t *testing.T, c *testcaddy.Caddy) string {
	t.Helper()
	code, body, err := c.AdminGet("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v %s", code, err, body)
	}
	return string(body)
}

// adminMetric sums the series of name that carry every one of labels
// (`k="v"`) at c's admin /metrics endpoint, and tells whether there is any.
func adminMetric(t *testing.T, c *testcaddy.Caddy, name string, labels ...string) (float64, bool) {
	t.Helper()
	text := scrape(t, c)
	return metricSum(text, name, labels...), len(metricLines(text, name, labels...)) > 0
}

// adminMetricSum is adminMetric's sum, 0 when there is no such series.
func adminMetricSum(t *testing.T, c *testcaddy.Caddy, name string, labels ...string) float64 {
	t.Helper()
	v, _ := adminMetric(t, c, name, labels...)
	return v
}

// metricValue is adminMetricSum for a series that must be there, e.g.
// `go_memstats_heap_alloc_bytes`: the test fails when it is not.
func metricValue(t *testing.T, c *testcaddy.Caddy, name string, labels ...string) float64 {
	t.Helper()
	v, ok := adminMetric(t, c, name, labels...)
	if !ok {
		t.Fatalf("no %s %v in /metrics", name, labels)
	}
	return v
}

// metricLines returns the sample lines of the exposition text whose metric
// is name and which carry every one of labels (`k="v"`).
func metricLines(text, name string, labels ...string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name) || len(l) == len(name) || (l[len(name)] != '{' && l[len(name)] != ' ') {
			continue
		}
		ok := true
		for _, lb := range labels {
			ok = ok && hasLabel(l, lb)
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}

// hasLabel reports whether the sample line carries the label pair lb
// (`k="v"`) itself, not as the end of another label's name or value.
func hasLabel(line, lb string) bool {
	for _, before := range []string{"{", ","} {
		for _, after := range []string{",", "}"} {
			if strings.Contains(line, before+lb+after) {
				return true
			}
		}
	}
	return false
}

// metricSum adds up the values of metricLines.
func metricSum(text, name string, labels ...string) float64 {
	var sum float64
	for _, l := range metricLines(text, name, labels...) {
		// The value follows the labels, or the name when there are none.
		rest := l[len(name):]
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// TestMetricsMimirStyle sends traffic through several route groups and
// finds Mimir's request metrics with route names from the route table, then
// reloads and finds them again. Two gateway instances share the collectors.
func TestMetricsMimirStyle(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	qf := startEchoBackend(t, "query_frontend")
	handler := fmt.Sprintf(`[{"handler": "subroute", "routes": [
		{"match": [{"path": ["/second/*"]}], "handle": [{"handler": "metrics_gateway", "proxy": {"default": {"url": %q}}}]},
		{"handle": [{"handler": "metrics_gateway", "proxy": {
			"default": {"url": %q},
			"distributor": {"url": %q}}}]}]}]`,
		qf.URL(), qf.URL(), cl.Target())
	c := testcaddy.Start(t, handler)
	before := scrape(t, c)

	body := standin.RemoteWriteBody(10, 1)
	if resp, b, err := push(c.Client, body); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %v %s", err, b)
	}
	for _, path := range []string{"/prometheus/api/v1/query_range?query=up", "/prometheus/api/v1/labels", "/ready", "/nowhere"} {
		if resp, _, err := c.Get(path); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	if resp, _, err := c.Get("/api/v1/push"); err != nil || resp.StatusCode != 401 {
		t.Fatalf("GET /api/v1/push without tenant: %v %v", resp, err)
	}

	want := map[string]float64{
		`cortex_request_duration_seconds_count{method="POST",route="api_v1_push",status_code="200",ws="false"}`:                                                    1,
		`cortex_request_duration_seconds_count{method="GET",route="api_v1_push",status_code="401",ws="false"}`:                                                     1,
		`cortex_request_duration_seconds_count{method="GET",route="prometheus_api_v1_query_range",status_code="200",ws="false"}`:                                   1,
		`cortex_request_duration_seconds_count{method="GET",route="prometheus_api_v1_labels",status_code="200",ws="false"}`:                                        1,
		`cortex_request_duration_seconds_count{method="GET",route="ready",status_code="200",ws="false"}`:                                                           1,
		`cortex_request_duration_seconds_count{method="GET",route="other",status_code="200",ws="false"}`:                                                           1,
		`cortex_request_duration_seconds_bucket{method="POST",route="api_v1_push",status_code="200",ws="false",le="+Inf"}`:                                         1,
		`cortex_inflight_requests{method="POST",route="api_v1_push"}`:                                                                                              0,
		`metrics_gateway_grpc_requests_total{backend="distributor",code="200",endpoint="` + standin.GroupIP(0) + ":" + cl.Port + `",target="` + cl.Target() + `"}`: 1,
	}
	after := scrape(t, c)
	checkMetrics(t, before, after, want)
	if v := parseExposition(after)[`metrics_gateway_grpc_endpoints_ready{backend="distributor"}`]; v != 1 {
		t.Errorf("endpoints_ready = %v, want 1", v)
	}

	if err := c.Reload(strings.Replace(handler, "/second/*", "/third/*", 1)); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if resp, b, err := pushRetrying(c.Client, body, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push after reload: %v %s", err, b)
	}
	checkMetrics(t, after, scrape(t, c), map[string]float64{
		`cortex_request_duration_seconds_count{method="POST",route="api_v1_push",status_code="200",ws="false"}`: 1,
		`metrics_gateway_grpc_endpoints_ready{backend="distributor"}`:                                           0,
	})
}

// parseExposition maps each sample line's name and labels to its value.
func parseExposition(exposition string) map[string]float64 {
	out := map[string]float64{}
	for _, l := range strings.Split(exposition, "\n") {
		i := strings.LastIndexByte(l, ' ')
		if l == "" || l[0] == '#' || i < 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(l[i+1:], &v); err == nil {
			out[l[:i]] = v
		}
	}
	return out
}

// checkMetrics checks that each wanted sample grew by the given amount
// since before. The collectors are shared by every gateway in the process,
// so other tests' traffic is in them too.
func checkMetrics(t *testing.T, before, after string, want map[string]float64) {
	t.Helper()
	b, a := parseExposition(before), parseExposition(after)
	for series, delta := range want {
		v, ok := a[series]
		if !ok {
			t.Errorf("metric missing: %s", series)
			continue
		}
		if got := v - b[series]; got != delta {
			t.Errorf("%s grew by %v, want %v", series, got, delta)
		}
	}
	if t.Failed() {
		var ours []string
		for _, l := range strings.Split(after, "\n") {
			if (strings.HasPrefix(l, "cortex_") || strings.HasPrefix(l, "metrics_gateway_")) && !strings.Contains(l, "_bucket") {
				ours = append(ours, l)
			}
		}
		t.Logf("exposition:\n%s", strings.Join(ours, "\n"))
	}
}

// TestAccessLogFields checks that access log entries say where each
// request went: route, backend component and, for gRPC, the endpoint.
func TestAccessLogFields(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, 1)
	qf := startEchoBackend(t, "query_frontend")
	c := testcaddy.Start(t, fmt.Sprintf(`[{"handler": "metrics_gateway", "proxy": {
		"default": {"url": %q},
		"distributor": {"url": %q}}}]`, qf.URL(), cl.Target()))

	if resp, b, err := push(c.Client, standin.RemoteWriteBody(10, 1)); err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %v %s", err, b)
	}
	if resp, _, err := c.Get("/prometheus/api/v1/query?query=up"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("query: %v", err)
	}

	type entry struct {
		Request struct {
			URI string `json:"uri"`
		} `json:"request"`
		Route    string `json:"metrics_gateway.route"`
		Backend  string `json:"metrics_gateway.backend"`
		Endpoint string `json:"metrics_gateway.endpoint"`
	}
	want := map[string]entry{}
	want["/api/v1/push"] = entry{Route: "api_v1_push", Backend: "distributor", Endpoint: standin.GroupIP(0) + ":" + cl.Port}
	want["/prometheus/api/v1/query?query=up"] = entry{Route: "prometheus_api_v1_query", Backend: "query_frontend"}

	got := map[string]entry{}
	standin.WaitFor(t, 20*time.Second, "both access log entries", func() bool {
		f, err := os.Open(c.AccessLog)
		if err != nil {
			return false
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var e entry
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				got[e.Request.URI] = e
			}
		}
		return len(got) >= 2
	})
	for uri, w := range want {
		g := got[uri]
		g.Request.URI = ""
		if g != w {
			t.Errorf("access log for %s: %+v, want %+v", uri, g, w)
		}
	}
}
