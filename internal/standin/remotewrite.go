package standin

import (
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/golang/snappy"
	"google.golang.org/protobuf/encoding/protowire"
)

// ContentTypeRW2 is the Content-Type of a Remote-Write 2.0 request.
const ContentTypeRW2 = "application/x-protobuf;proto=io.prometheus.write.v2.Request"

// ContentTypeRW1 is the Content-Type Prometheus sends with Remote-Write 1.0.
const ContentTypeRW1 = "application/x-protobuf"

// baseTimestampMs is the timestamp of the first sample of generated bodies
// (2025-01-01T00:00:00Z), fixed so bodies are reproducible.
const baseTimestampMs = 1735689600000

// RemoteWriteBody returns a snappy-compressed Prometheus Remote-Write 1.0
// WriteRequest with series series of samplesPerSeries samples each. Labels look
// like a node-exporter scrape (name, job, instance, cluster, namespace, pod, a
// per-series label), so compression ratio and decode cost are realistic.
func RemoteWriteBody(series, samplesPerSeries int) []byte {
	return RemoteWriteBodyAt(series, samplesPerSeries, baseTimestampMs)
}

// RemoteWriteBodyAt is RemoteWriteBody with the first sample at startMs; tests
// use distinct start times to make every body (and its sha256) unique.
func RemoteWriteBodyAt(series, samplesPerSeries int, startMs int64) []byte {
	var b []byte
	for s := 0; s < series; s++ {
		var ts []byte
		for _, l := range seriesLabels(s) {
			var lb []byte
			lb = protowire.AppendTag(lb, 1, protowire.BytesType)
			lb = protowire.AppendString(lb, l[0])
			lb = protowire.AppendTag(lb, 2, protowire.BytesType)
			lb = protowire.AppendString(lb, l[1])
			ts = protowire.AppendTag(ts, 1, protowire.BytesType)
			ts = protowire.AppendBytes(ts, lb)
		}
		ts = appendSamples(ts, s, samplesPerSeries, startMs)
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, ts)
	}
	return snappy.Encode(nil, b)
}

// appendSamples appends the samples of series s (field 2 of a TimeSeries
// in both protocols).
func appendSamples(ts []byte, s, n int, startMs int64) []byte {
	for i := 0; i < n; i++ {
		ts = protowire.AppendTag(ts, 2, protowire.BytesType)
		ts = protowire.AppendBytes(ts, sample(s, i, startMs))
	}
	return ts
}

// RemoteWriteV2Body returns a snappy-compressed Remote-Write 2.0 Request
// (io.prometheus.write.v2.Request: symbols = 4, timeseries = 5 with
// labels_refs = 1, samples = 2) with the same series as RemoteWriteBody.
func RemoteWriteV2Body(series, samplesPerSeries int) []byte {
	symbols := []string{""}
	index := map[string]uint32{"": 0}
	ref := func(s string) uint32 {
		if i, ok := index[s]; ok {
			return i
		}
		i := uint32(len(symbols))
		symbols = append(symbols, s)
		index[s] = i
		return i
	}
	var tsAll []byte
	for s := 0; s < series; s++ {
		var refs []byte
		for _, l := range seriesLabels(s) {
			refs = protowire.AppendVarint(refs, uint64(ref(l[0])))
			refs = protowire.AppendVarint(refs, uint64(ref(l[1])))
		}
		var ts []byte
		ts = protowire.AppendTag(ts, 1, protowire.BytesType)
		ts = protowire.AppendBytes(ts, refs)
		ts = appendSamples(ts, s, samplesPerSeries, baseTimestampMs)
		tsAll = protowire.AppendTag(tsAll, 5, protowire.BytesType)
		tsAll = protowire.AppendBytes(tsAll, ts)
	}
	var b []byte
	for _, s := range symbols {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	b = append(b, tsAll...)
	return snappy.Encode(nil, b)
}

// seriesLabels returns the sorted label pairs of generated series s.
func seriesLabels(s int) [][2]string {
	node := s / 100
	return [][2]string{
		{"__name__", metricNames[s%len(metricNames)]},
		{"cluster", "prod-eu-west-1"},
		{"cpu", strconv.Itoa(s % 16)},
		{"instance", fmt.Sprintf("10.42.%d.%d:9100", node/250, node%250+1)},
		{"job", "integrations/node_exporter"},
		{"mode", cpuModes[(s/16)%len(cpuModes)]},
		{"namespace", "monitoring"},
		{"pod", fmt.Sprintf("node-exporter-%05d", node)},
	}
}

var (
	metricNames = []string{"node_cpu_seconds_total", "node_cpu_guest_seconds_total"}
	cpuModes    = []string{"idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user"}
)

// sample encodes a Sample{value = 1 (double), timestamp = 2 (int64)}.
func sample(s, i int, startMs int64) []byte {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, math.Float64bits(float64(s)*1.5+float64(i)))
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(startMs+int64(i)*15000))
	return b
}

// PushCounts is what a decoded push contained.
type PushCounts struct {
	Series, Samples, Histograms, Exemplars int
}

// errTruncated is returned for bodies that end in the middle of a field.
var errTruncated = errors.New("truncated protobuf message")

// rwFields are the field numbers a Remote-Write version counts by.
type rwFields struct {
	timeseries                     protowire.Number // in the request
	samples, exemplars, histograms protowire.Number // in a TimeSeries
}

var (
	// Remote-Write 1.0 WriteRequest: timeseries = 1; in a TimeSeries
	// samples = 2, exemplars = 3, histograms = 4.
	rw1Fields = rwFields{timeseries: 1, samples: 2, exemplars: 3, histograms: 4}
	// Remote-Write 2.0 Request: timeseries = 5; in a TimeSeries
	// samples = 2, histograms = 3, exemplars = 4.
	rw2Fields = rwFields{timeseries: 5, samples: 2, exemplars: 4, histograms: 3}
)

// DecodeRW1 counts the series, samples, histograms and exemplars of an
// uncompressed Remote-Write 1.0 WriteRequest.
func DecodeRW1(b []byte) (PushCounts, error) { return decodeCounts(b, rw1Fields) }

// DecodeRW2 counts the same for an uncompressed Remote-Write 2.0 Request.
func DecodeRW2(b []byte) (PushCounts, error) { return decodeCounts(b, rw2Fields) }

func decodeCounts(b []byte, f rwFields) (PushCounts, error) {
	var c PushCounts
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num != f.timeseries || typ != protowire.BytesType {
			return nil
		}
		c.Series++
		return eachField(v, func(num protowire.Number, _ protowire.Type, _ []byte) error {
			switch num {
			case f.samples:
				c.Samples++
			case f.exemplars:
				c.Exemplars++
			case f.histograms:
				c.Histograms++
			}
			return nil
		})
	})
	return c, err
}

// eachField calls fn for every top-level field of the message in b. For
// length-delimited fields v is the field's content, otherwise nil.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		if err := fn(num, typ, v); err != nil {
			return err
		}
	}
	return nil
}
