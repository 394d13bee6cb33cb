package demo

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Stats counts what a demo workload did.
type Stats struct {
	// Requests are requests that completed with 200 OK (served, for the server).
	Requests int64 `json:"requests"`
	// Failures are requests that did not complete (client only).
	Failures int64 `json:"failures"`
	// HandshakeFailures are TLS handshakes that failed, on either side of this workload.
	HandshakeFailures int64 `json:"handshake_failures"`
	// Rotations are certificates received after the first.
	Rotations int64 `json:"rotations"`
	// Serial is the serial of the certificate presented now.
	Serial string `json:"serial"`
	// SPIFFEID is this workload's identity.
	SPIFFEID string `json:"spiffe_id"`
	// NotAfter is when the current certificate expires.
	NotAfter time.Time `json:"not_after"`
}

// counters are a workload's live Stats.
type counters struct {
	requests, failures, handshakeFailures, rotations atomic.Int64

	mu       sync.Mutex
	serial   string
	id       string
	notAfter time.Time
}

func (c *counters) snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{
		Requests: c.requests.Load(), Failures: c.failures.Load(), HandshakeFailures: c.handshakeFailures.Load(),
		Rotations: c.rotations.Load(), Serial: c.serial, SPIFFEID: c.id, NotAfter: c.notAfter,
	}
}

// observe is called with every certificate the source delivers; a new serial is a rotation,
// logged with what replaced what.
func (c *counters) observe(log *slog.Logger) func(*x509svid.SVID) {
	return func(svid *x509svid.SVID) {
		leaf := svid.Certificates[0]
		serial := leaf.SerialNumber.Text(16)
		c.mu.Lock()
		prev := c.serial
		if prev == serial {
			c.mu.Unlock()
			return
		}
		c.serial, c.id, c.notAfter = serial, svid.ID.String(), leaf.NotAfter
		c.mu.Unlock()
		if prev == "" {
			log.Info("demo: certificate received", "spiffe_id", svid.ID.String(), "serial", serial, "not_after", leaf.NotAfter)
			return
		}
		c.rotations.Add(1)
		log.Info("demo: rotation", "spiffe_id", svid.ID.String(), "old_serial", prev, "serial", serial, "not_after", leaf.NotAfter)
	}
}

// StatsHandler serves a workload's Stats as JSON.
func StatsHandler(stats func() Stats) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(stats())
	})
}
