package controlplane

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// HTTP paths of listen.http.
const (
	PathMetrics = "/metrics"
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
	PathCRL     = "/crl"
	PathBundle  = "/bundle"
)

// BundleRefreshHint is the refresh hint of the SPIFFE bundle endpoint: how often federated
// peers should fetch the bundle again.
const BundleRefreshHint = 5 * time.Minute

// mountHTTP mounts the node's own handlers.
func (s *Server) mountHTTP() error {
	s.mux.Handle("GET "+PathMetrics, promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	s.mux.HandleFunc("GET "+PathHealthz, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET "+PathReadyz, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	s.mux.HandleFunc("GET "+PathCRL, func(w http.ResponseWriter, _ *http.Request) {
		der, err := s.CRL()
		if err != nil {
			s.log.Warn("crl", "error", err)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(der)
	})
	s.mux.HandleFunc("GET "+PathOCSP+"/", s.serveOCSP)
	s.mux.HandleFunc("POST "+PathOCSP, s.serveOCSP)
	h, err := federation.NewHandler(s.td, spiffeBundleSource{s})
	if err != nil {
		return fmt.Errorf("bundle endpoint: %w", err)
	}
	s.mux.Handle("GET "+PathBundle, h)
	return nil
}

// newHTTPServer builds the HTTPS server of listen.http: the node certificate, a client
// certificate asked for (the extend API authenticates with it) and verified per request,
// bounded headers, bodies and times so a slow client cannot hold a connection.
func (s *Server) newHTTPServer() *http.Server {
	return &http.Server{
		Handler: http.MaxBytesHandler(s.mux, int64(s.cfg.Limits.MaxMessageBytes)),
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: tlsconfig.GetCertificate(s.svid),
			ClientAuth:     tls.RequestClientCert,
		},
		ReadHeaderTimeout: s.cfg.Limits.ReadHeaderTimeout.D(),
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		// Handshake failures of probes and scanners are routine: debug level.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// spiffeBundleSource serves the cluster's bundle to the SPIFFE bundle endpoint, with a refresh
// hint and the sequence number of the replicated state.
type spiffeBundleSource struct{ s *Server }

// GetBundleForTrustDomain implements spiffebundle.Source.
func (b spiffeBundleSource) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td != b.s.td {
		return nil, fmt.Errorf("trust domain %q is not served here", td.Name())
	}
	out := spiffebundle.FromX509Bundle(b.s.Bundle())
	out.SetRefreshHint(BundleRefreshHint)
	out.SetSequenceNumber(bundleSequence(b.s.fsm.State()))
	return out, nil
}
