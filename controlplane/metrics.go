package controlplane

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Issuance flows, the values of the flow label.
const (
	FlowRegister = "register"
	FlowRefresh  = "refresh"
	FlowExtend   = "extend"
)

// metrics are the server's own series; each Server has its own registry.
type metrics struct {
	issued       *prometheus.CounterVec
	refused      *prometheus.CounterVec
	issuance     *prometheus.HistogramVec
	applySeconds *prometheus.HistogramVec

	// byFlow holds the issued and issuance series of the flows this package knows, looked up
	// once: WithLabelValues hashes its labels and takes a lock on every call.
	byFlow map[string]flowMetrics
}

// flowMetrics are the series of one flow.
type flowMetrics struct {
	issued   prometheus.Counter
	issuance prometheus.Observer
}

// flow returns the series of a flow.
func (m *metrics) flow(name string) flowMetrics {
	if f, ok := m.byFlow[name]; ok {
		return f
	}
	return flowMetrics{issued: m.issued.WithLabelValues(name), issuance: m.issuance.WithLabelValues(name)}
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_issued_total",
			Help: "Certificates issued and committed, by flow (register, refresh, extend, ...).",
		}, []string{"flow"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_refused_total",
			Help: "Issuance requests refused, by reason (the rule that refused them).",
		}, []string{"reason"}),
		issuance: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshca_issuance_seconds",
			Help:    "Time from receiving an issuance request to answering it with a committed certificate, by flow.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"flow"}),
		applySeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshca_raft_apply_seconds",
			Help:    "Time to commit and apply a command through the replicated log (forwarded to the leader from followers), by command.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"command"}),
	}
	for _, c := range []prometheus.Collector{
		m.issued, m.refused, m.issuance, m.applySeconds,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	// Register and refresh are exported at zero from the start; the others appear with their
	// first issuance.
	m.byFlow = map[string]flowMetrics{}
	for _, f := range []string{FlowRegister, FlowRefresh} {
		m.byFlow[f] = flowMetrics{issued: m.issued.WithLabelValues(f), issuance: m.issuance.WithLabelValues(f)}
	}
	return m, nil
}
