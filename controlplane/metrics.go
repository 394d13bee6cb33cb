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
	for _, f := range []string{FlowRegister, FlowRefresh} {
		m.issued.WithLabelValues(f)
	}
	return m, nil
}
