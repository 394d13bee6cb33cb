package launcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/controlplane/confirm"
)

// ConfirmPath is where Handler is mounted.
const ConfirmPath = "/confirm"

// Policy is what the provider decides a confirm request with.
type Policy struct {
	// Provider is the provider's service identity; a request for another provider is refused.
	Provider string
	// Verifier checks the instance's identity document.
	Verifier *Verifier
	// MaxTTL, when positive, caps the lifetime of the certificates the provider confirms.
	MaxTTL time.Duration
}

// Decide answers a confirm request at now: allowed when the request is for this provider and
// its attestation data is an identity document this provider signed, valid at now, for
// exactly the request's domain, service and instance id. A refusal's reason names the claim
// and the rule. Register and refresh confirmations are decided alike: a refresh must carry
// the instance's current document too.
func (p *Policy) Decide(req *confirm.Request, now time.Time) confirm.Response {
	if req.Provider != p.Provider {
		return confirm.Response{Reason: clip(fmt.Sprintf("provider: %q is not this provider (%s)", req.Provider, p.Provider), confirm.MaxReasonLen)}
	}
	want := Instance{Domain: req.Domain, Service: req.Service, InstanceID: req.InstanceID}
	if _, err := p.Verifier.Verify(req.AttestationData, want, now); err != nil {
		return confirm.Response{Reason: clip("attestation_data: "+err.Error(), confirm.MaxReasonLen)}
	}
	resp := confirm.Response{Allowed: true}
	if p.MaxTTL > 0 {
		resp.TTLSeconds = int64(p.MaxTTL / time.Second)
	}
	return resp
}

// clip shortens s to at most n bytes without cutting a UTF-8 sequence: the CA refuses longer
// reasons.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Counts are how many confirm requests a Handler answered, by answer.
type Counts struct {
	Allowed  int64 `json:"allowed"`
	Refused  int64 `json:"refused"`
	Rejected int64 `json:"rejected"`
}

// Handler serves the confirm endpoint: POST of a confirm.Request (decoded strictly), answered
// with the confirm.Response of Policy.Decide. A body that is not a confirm request is
// answered 400 (the CA then reports the provider as failing, not as refusing).
type Handler struct {
	// Policy decides.
	Policy *Policy
	// Now reads the time decisions are made at; time.Now when nil.
	Now func() time.Time
	// Log receives every decision; slog.Default() when nil.
	Log *slog.Logger
	// Metrics, when set, counts the answers for Prometheus.
	Metrics *Metrics

	allowed, refused, rejected atomic.Int64
}

// Answers counted by Metrics.
const (
	answerAllowed  = "allowed"
	answerRefused  = "refused"
	answerRejected = "rejected"
)

// Metrics are the confirm endpoint's Prometheus metrics.
type Metrics struct {
	confirmations *prometheus.CounterVec
}

// NewMetrics registers the provider's metrics on reg:
// meshca_provider_confirmations_total{operation, answer}, answer being allowed, refused or
// rejected (not a confirm request; operation "unknown").
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{confirmations: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshca_provider_confirmations_total",
		Help: "Confirm requests answered by the example provider, by operation and answer.",
	}, []string{"operation", "answer"})}
	if err := reg.Register(m.confirmations); err != nil {
		return nil, fmt.Errorf("provider metrics: %w", err)
	}
	return m, nil
}

// count records one answer.
func (h *Handler) count(operation, answer string) {
	switch answer {
	case answerAllowed:
		h.allowed.Add(1)
	case answerRefused:
		h.refused.Add(1)
	default:
		h.rejected.Add(1)
	}
	if h.Metrics != nil {
		h.Metrics.confirmations.WithLabelValues(operation, answer).Inc()
	}
}

var _ http.Handler = (*Handler)(nil)

// Counts are the handler's answers so far.
func (h *Handler) Counts() Counts {
	return Counts{Allowed: h.allowed.Load(), Refused: h.refused.Load(), Rejected: h.rejected.Load()}
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := h.Log
	if log == nil {
		log = slog.Default()
	}
	caller := "unknown"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		if id, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0]); err == nil {
			caller = id.String()
		}
	}
	if r.Method != http.MethodPost {
		h.count("unknown", answerRejected)
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method: only POST is served", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, confirm.MaxRequestBytes))
	if err != nil {
		h.count("unknown", answerRejected)
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			http.Error(w, fmt.Sprintf("body: more than %d bytes", confirm.MaxRequestBytes), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
		return
	}
	req, err := confirm.DecodeRequest(body)
	if err != nil {
		h.count("unknown", answerRejected)
		log.Warn("provider: rejected a malformed confirm request", "caller", caller, "error", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	resp := h.Policy.Decide(req, now())
	attrs := []any{"caller", caller, "operation", req.Operation, "identity", req.Domain + "." + req.Service, "instance_id", req.InstanceID, "client_addr", req.ClientAddr}
	if resp.Allowed {
		h.count(req.Operation, answerAllowed)
		log.Info("provider: confirmed", attrs...)
	} else {
		h.count(req.Operation, answerRefused)
		log.Warn("provider: refused", append(attrs, "reason", resp.Reason)...)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}
