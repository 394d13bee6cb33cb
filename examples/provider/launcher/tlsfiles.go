package launcher

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CANodePathPrefix is the SPIFFE ID path of every CA node's certificate
// (spiffe://<trust-domain>/meshca/server/<node-id>): the only callers of the confirm endpoint.
const CANodePathPrefix = "/meshca/server/"

// FileSource is the provider's TLS material read from PEM files: its certificate chain and key
// (an X.509-SVID) and the trust bundle of its trust domain. Each read checks whether a file was
// replaced and loads it again if so, so a renewed certificate is presented from the next
// handshake on. A replacement that does not load (a key that does not match the certificate
// yet) is logged and the previous material kept until the files agree.
type FileSource struct {
	td                            spiffeid.TrustDomain
	certFile, keyFile, bundleFile string
	log                           *slog.Logger

	mu         sync.Mutex
	svid       *x509svid.SVID
	svidStamp  [2]fileStamp
	bundle     *x509bundle.Bundle
	bundleSeen fileStamp
}

var (
	_ x509svid.Source   = (*FileSource)(nil)
	_ x509bundle.Source = (*FileSource)(nil)
)

// fileStamp tells whether a file changed: its identity, size and modification time.
type fileStamp struct {
	info os.FileInfo
}

func (s fileStamp) same(o os.FileInfo) bool {
	return s.info != nil && os.SameFile(s.info, o) && s.info.Size() == o.Size() && s.info.ModTime().Equal(o.ModTime())
}

// NewFileSource reads the certificate chain, key and bundle files of trust domain td, failing
// if any does not load now.
func NewFileSource(td spiffeid.TrustDomain, certFile, keyFile, bundleFile string, log *slog.Logger) (*FileSource, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &FileSource{td: td, certFile: certFile, keyFile: keyFile, bundleFile: bundleFile, log: log}
	if _, err := s.GetX509SVID(); err != nil {
		return nil, err
	}
	if _, err := s.GetX509BundleForTrustDomain(td); err != nil {
		return nil, err
	}
	return s, nil
}

// GetX509SVID implements x509svid.Source: the certificate and key in the files now.
func (s *FileSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ci, err1 := os.Stat(s.certFile)
	ki, err2 := os.Stat(s.keyFile)
	if err1 == nil && err2 == nil && s.svidStamp[0].same(ci) && s.svidStamp[1].same(ki) {
		return s.svid, nil
	}
	svid, err := x509svid.Load(s.certFile, s.keyFile)
	if err == nil && svid.ID.TrustDomain() != s.td {
		err = fmt.Errorf("%s names %s, not a member of %s", s.certFile, svid.ID, s.td)
	}
	if err == nil && (err1 != nil || err2 != nil) {
		err = fmt.Errorf("stat: %v %v", err1, err2)
	}
	if err != nil {
		if s.svid != nil {
			s.log.Warn("provider: keeping the current certificate: the files do not load", "cert", s.certFile, "key", s.keyFile, "error", err)
			return s.svid, nil
		}
		return nil, fmt.Errorf("certificate %s, key %s: %w", s.certFile, s.keyFile, err)
	}
	if s.svid != nil {
		s.log.Info("provider: certificate reloaded", "spiffe_id", svid.ID.String(), "serial", svid.Certificates[0].SerialNumber.Text(16), "not_after", svid.Certificates[0].NotAfter)
	}
	s.svid, s.svidStamp = svid, [2]fileStamp{{ci}, {ki}}
	return svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source: the bundle file's roots, for the
// source's own trust domain only.
func (s *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.td {
		return nil, fmt.Errorf("no bundle for trust domain %q (this provider trusts %q)", td, s.td)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	bi, statErr := os.Stat(s.bundleFile)
	if statErr == nil && s.bundleSeen.same(bi) {
		return s.bundle, nil
	}
	b, err := x509bundle.Load(td, s.bundleFile)
	if err == nil && statErr != nil {
		err = statErr
	}
	if err != nil {
		if s.bundle != nil {
			s.log.Warn("provider: keeping the current bundle: the file does not load", "bundle", s.bundleFile, "error", err)
			return s.bundle, nil
		}
		return nil, fmt.Errorf("bundle %s: %w", s.bundleFile, err)
	}
	s.bundle, s.bundleSeen = b, fileStamp{bi}
	return b, nil
}

// ServerTLSConfig is the confirm endpoint's TLS: it presents src's certificate and admits
// only clients whose certificates chain to src's bundle and name a CA node of td.
func ServerTLSConfig(src *FileSource, td spiffeid.TrustDomain) *tls.Config {
	nodes := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if id.MemberOf(td) && strings.HasPrefix(id.Path(), CANodePathPrefix) && len(id.Path()) > len(CANodePathPrefix) {
			return nil
		}
		return fmt.Errorf("client %s is not a CA node of %s (%s<node-id>)", id, td, CANodePathPrefix)
	})
	return tlsconfig.MTLSServerConfig(src, src, nodes)
}

// NewHTTPServer is the confirm endpoint's server: h at ConfirmPath, over the mutual TLS of
// ServerTLSConfig. Serve it with ServeTLS(listener, "", ""). Failed handshakes (a caller
// that is not a CA node) are logged on log.
func NewHTTPServer(h *Handler, src *FileSource, td spiffeid.TrustDomain, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.Default()
	}
	mux := http.NewServeMux()
	mux.Handle(ConfirmPath, h)
	return &http.Server{
		Handler:           mux,
		TLSConfig:         ServerTLSConfig(src, td),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// Ready reports why the provider cannot serve at now: no certificate that loads, one that is
// expired or not yet valid, or no bundle. Nil means ready.
func (s *FileSource) Ready(now time.Time) error {
	svid, err := s.GetX509SVID()
	if err != nil {
		return err
	}
	leaf := svid.Certificates[0]
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return fmt.Errorf("certificate %s (serial %s) is valid from %s to %s, not at %s", s.certFile, leaf.SerialNumber.Text(16),
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	_, err = s.GetX509BundleForTrustDomain(s.td)
	return err
}

// Ops paths of the provider's plain-HTTP operations port (keep it on loopback).
const (
	OpsMetricsPath = "/metrics"
	OpsHealthPath  = "/healthz"
	OpsReadyPath   = "/readyz"
)

// OpsHandler serves the provider's /metrics from gatherer, /healthz (200 while the process
// serves) and /readyz (200 when src is Ready at now(), 503 with the reason otherwise).
func OpsHandler(gatherer prometheus.Gatherer, src *FileSource, now func() time.Time) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+OpsMetricsPath, promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET "+OpsHealthPath, func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET "+OpsReadyPath, func(w http.ResponseWriter, _ *http.Request) {
		if err := src.Ready(now()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}
