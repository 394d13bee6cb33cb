package agent

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshca/meshca/sds"
)

// metrics are the agent's meshca_agent_* metrics.
type metrics struct {
	rotations            *prometheus.CounterVec
	reissues             *prometheus.CounterVec
	failures             *prometheus.CounterVec
	bundleUpdates        prometheus.Counter
	bundleStreamFailures prometheus.Counter
	bundleNACKs          prometheus.Counter
}

func newMetrics(a *Agent) (*metrics, error) {
	m := &metrics{
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_agent_rotations_total",
			Help: "Certificates the agent installed, by identity and flow (register, refresh).",
		}, []string{"identity", "flow"}),
		reissues: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_agent_reissues_total",
			Help: "Certificates replaced ahead of their schedule because a CA rotation asked for every certificate of a former issuer to be replaced now, by identity.",
		}, []string{"identity"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_agent_rotation_failures_total",
			Help: "Failed registrations and refreshes, by identity, flow and reason (gRPC code or attestation).",
		}, []string{"identity", "flow", "reason"}),
		bundleUpdates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_agent_bundle_updates_total",
			Help: "Trust bundle changes received from the cluster and applied.",
		}),
		bundleStreamFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_agent_bundle_stream_failures_total",
			Help: "Bundle streams from CA nodes that ended or could not be opened.",
		}),
		bundleNACKs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_agent_bundle_nacks_total",
			Help: "Bundle responses from CA nodes the agent rejected.",
		}),
	}
	for _, c := range []prometheus.Collector{m.rotations, m.reissues, m.failures, m.bundleUpdates, m.bundleStreamFailures, m.bundleNACKs, expiryCollector{a}} {
		if err := a.registry.Register(c); err != nil {
			return nil, fmt.Errorf("agent metrics: %w", err)
		}
	}
	return m, nil
}

var expiryDesc = prometheus.NewDesc("meshca_agent_cert_expiry_seconds",
	"Seconds until the certificate the agent serves for an identity expires (negative once expired).",
	[]string{"identity", "spiffe_id"}, nil)

// expiryCollector reports each served certificate's time to expiry at scrape time, by the
// agent's clock.
type expiryCollector struct{ a *Agent }

func (expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- expiryDesc }

func (c expiryCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.a.clock.Now()
	for _, l := range c.a.identities {
		v := c.a.store.View(l.id)
		if v.SVID == nil {
			continue
		}
		left := v.SVID.Certificates[0].NotAfter.Sub(now).Seconds()
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, left, l.cfg.Name, l.id.String())
	}
}

// The admin socket's paths.
const (
	// SecretsPath serves the sds.Inventory as JSON (meshctl agent secrets).
	SecretsPath = "/v1/secrets"
	// MetricsPath serves the Prometheus metrics.
	MetricsPath = "/metrics"
	// HealthPath answers 200 while the process serves.
	HealthPath = "/healthz"
	// ReadyPath answers 200 once every identity holds a certificate and the own bundle is
	// known, 503 with the missing parts otherwise.
	ReadyPath = "/readyz"
)

func (a *Agent) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+SecretsPath, sds.InventoryHandler(a.store))
	mux.Handle("GET "+MetricsPath, promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET "+HealthPath, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET "+ReadyPath, func(w http.ResponseWriter, _ *http.Request) {
		missing := a.notReady()
		w.Header().Set("Content-Type", "application/json")
		if len(missing) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"ready": len(missing) == 0, "missing": missing})
	})
	return mux
}

// notReady lists what the agent does not serve yet.
func (a *Agent) notReady() []string {
	missing := []string{}
	for _, l := range a.identities {
		v := a.store.View(l.id)
		if v.SVID == nil {
			missing = append(missing, "certificate of "+l.cfg.Name)
		}
	}
	if _, err := a.bundleSource().GetX509BundleForTrustDomain(a.td); err != nil {
		missing = append(missing, "trust bundle of "+a.td.Name())
	}
	return missing
}
