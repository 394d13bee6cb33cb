package raftstore

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a cluster connection is refused, the values of the reason label of
// meshca_raft_conn_refused_total.
const (
	// RefusedNoCertificate: the client presented no certificate.
	RefusedNoCertificate = "no_certificate"
	// RefusedBadCertificate: the certificate does not parse.
	RefusedBadCertificate = "bad_certificate"
	// RefusedNotSPIFFE: the certificate does not carry exactly one SPIFFE ID.
	RefusedNotSPIFFE = "not_spiffe"
	// RefusedWrongTrustDomain: the SPIFFE ID is in another trust domain.
	RefusedWrongTrustDomain = "wrong_trust_domain"
	// RefusedNotServer: the SPIFFE ID is not spiffe://<td>/meshca/server/<id>.
	RefusedNotServer = "not_server"
	// RefusedUntrusted: the certificate does not chain to the cluster CA (or is expired).
	RefusedUntrusted = "untrusted"
	// RefusedNotMember: the node id is not in the current Raft configuration.
	RefusedNotMember = "not_member"
	// RefusedNoALPN: the connection negotiated neither ALPNRaft nor ALPNGRPC.
	RefusedNoALPN = "no_alpn"
	// RefusedHandshake: the TLS handshake failed before the peer check (not TLS, no common
	// version or cipher suite, timeout).
	RefusedHandshake = "handshake"
)

type nodeMetrics struct {
	reg     prometheus.Registerer
	refused *prometheus.CounterVec
	propose *prometheus.HistogramVec
	leader  prometheus.Gauge
	// forwardBatch counts the commands of each batch a follower forwards.
	forwardBatch prometheus.Histogram
}

func newNodeMetrics(reg prometheus.Registerer) (*nodeMetrics, error) {
	m := &nodeMetrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_raft_conn_refused_total",
			Help: "Cluster-port connections refused by the peer check, by reason.",
		}, []string{"reason"}),
		propose: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshca_raft_propose_seconds",
			Help:    "Time from Propose to the applied result, by path (leader or forwarded) and outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"path", "outcome"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshca_raft_is_leader",
			Help: "1 when this node is the Raft leader.",
		}),
		forwardBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshca_raft_forward_batch_commands",
			Help:    "Commands a follower sent to the leader in one forwarded message.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 9),
		}),
	}
	if reg == nil {
		return m, nil
	}
	for i, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			for _, done := range m.collectors()[:i] {
				reg.Unregister(done)
			}
			if errors.As(err, &are) {
				return nil, fmt.Errorf("raftstore: Registerer: a node's metrics are already registered there (one registry per node): %w", err)
			}
			return nil, fmt.Errorf("raftstore: Registerer: %w", err)
		}
	}
	m.reg = reg
	return m, nil
}

func (m *nodeMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.refused, m.propose, m.leader, m.forwardBatch}
}

// unregister removes the metrics from the registry, so a node restarted in the same process
// can register them again.
func (m *nodeMetrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors() {
		m.reg.Unregister(c)
	}
}
