package caddymodule

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/metrics-gateway/metrics_gateway/grpcpush"
)

// The gateway's request metrics have the names and labels of the metrics
// every Mimir component exports (dskit's instrumentation), so that the Mimir
// mixin's dashboards, which select `job=~".*gateway.*"` for their gateway
// rows, read them as they are.
var (
	requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "cortex_request_duration_seconds",
		Help: "Time (in seconds) spent serving HTTP requests, by route (from the route table), method, status code and whether it was a websocket.",
		// dskit's instrument.DefBuckets.
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 25, 50, 100},
		// Native histogram as well, as Mimir's own servers export.
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  100,
		NativeHistogramMinResetDuration: time.Hour,
	}, []string{"method", "route", "status_code", "ws"})

	inflightRequests = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cortex_inflight_requests",
		Help: "Current number of inflight requests, by method and route.",
	}, []string{"method", "route"})
)

// registerCollectors registers collectors in the config's metrics registry.
// Caddy creates a registry per config load; the collectors are shared, so
// their values carry over reloads. A second gateway in the same config
// registers the same collectors again, which is not an error.
func registerCollectors(ctx caddy.Context, cs ...prometheus.Collector) error {
	reg := ctx.GetMetricsRegistry()
	for _, c := range cs {
		err := reg.Register(c)
		var already prometheus.AlreadyRegisteredError
		if err != nil && !(errors.As(err, &already) && already.ExistingCollector == c) {
			return err
		}
	}
	return nil
}

// instrument serves a request through serve and records it in the request
// metrics under its route. The records are deferred: reverse_proxy aborts a
// response that fails mid-stream with panic(http.ErrAbortHandler), and such
// a request must still leave the in-flight gauge and be counted.
func instrument(w http.ResponseWriter, r *http.Request, route *Route, serve func(http.ResponseWriter) error) (err error) {
	method := methodLabel(r.Method)
	inflight := inflightRequests.WithLabelValues(method, route.Name)
	inflight.Inc()
	start := time.Now()
	rec := caddyhttp.NewResponseRecorder(w, nil, nil) // streams; records the status
	defer func() {
		inflight.Dec()
		status := statusOf(rec.Status(), err)
		if rec.Status() == 0 && err == nil && r.Context().Err() != nil {
			status = grpcpush.StatusClientClosedRequest
		}
		requestDuration.WithLabelValues(method, route.Name, statusLabel(status), wsLabel(r)).Observe(time.Since(start).Seconds())
	}()
	return serve(rec)
}

// methodLabel bounds the method label to the methods HTTP defines: the
// method is client input and must not create series at will.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete,
		http.MethodHead, http.MethodOptions, http.MethodPatch:
		return m
	}
	return "OTHER"
}

func wsLabel(r *http.Request) string {
	if r.Header.Get("Upgrade") == "websocket" {
		return "true"
	}
	return "false"
}

// statusOf is the status a request ended with: what was written, or, when a
// handler returned an error before writing, the status Caddy will write.
func statusOf(written int, err error) int {
	if written != 0 {
		return written
	}
	if err != nil {
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			return he.StatusCode
		}
		return http.StatusInternalServerError
	}
	return http.StatusOK
}

var statusCodes [600]string

func init() {
	for i := range statusCodes {
		statusCodes[i] = strconv.Itoa(i)
	}
}

// statusLabel formats a status code without allocating.
func statusLabel(code int) string {
	if code >= 0 && code < len(statusCodes) {
		return statusCodes[code]
	}
	return strconv.Itoa(code)
}
