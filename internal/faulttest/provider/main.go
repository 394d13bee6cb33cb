// Command provider is the launcher the container fault tests run beside a meshca cluster: it
// answers the CA nodes' confirm requests over mutual TLS, admitting an instance whose
// attestation data is "doc:<instance id>". It is a test fixture, small enough to run FROM
// scratch; examples/provider is the launcher to read for a real one.
//
//	provider -trust-domain TD -cert FILE -key FILE -bundle FILE [-listen :8444]
//
// The certificate is one the cluster's CA issued to the provider's own service identity; only
// CA nodes of the trust domain (spiffe://TD/meshca/server/...) are served. SIGTERM stops it.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/controlplane/confirm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "provider:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("provider", flag.ContinueOnError)
	td := fs.String("trust-domain", "", "the cluster's trust domain (required)")
	certFile := fs.String("cert", "", "PEM certificate chain issued to the provider's identity (required)")
	keyFile := fs.String("key", "", "PEM private key of -cert (required)")
	bundleFile := fs.String("bundle", "", "PEM roots of the cluster (required)")
	listen := fs.String("listen", ":8444", "address to serve the confirm endpoint on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *td == "" || *certFile == "" || *keyFile == "" || *bundleFile == "" {
		return errors.New("-trust-domain, -cert, -key and -bundle are required")
	}
	trust, err := spiffeid.TrustDomainFromString(*td)
	if err != nil {
		return fmt.Errorf("-trust-domain: %w", err)
	}
	svid, err := x509svid.Load(*certFile, *keyFile)
	if err != nil {
		return fmt.Errorf("-cert/-key: %w", err)
	}
	bundle, err := x509bundle.Load(trust, *bundleFile)
	if err != nil {
		return fmt.Errorf("-bundle: %w", err)
	}
	nodes := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if id.MemberOf(trust) && strings.HasPrefix(id.Path(), "/meshca/server/") {
			return nil
		}
		return fmt.Errorf("client %s is not a CA node of %s", id, trust)
	})
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	srv := &http.Server{
		Addr:              *listen,
		TLSConfig:         tlsconfig.MTLSServerConfig(svid, bundle, nodes),
		ReadHeaderTimeout: 5 * time.Second,
		Handler:           http.HandlerFunc(confirmHandler),
	}
	srv.TLSConfig.MinVersion = tls.VersionTLS12
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServeTLS("", "") }()
	log.Info("provider serving", "listen", *listen, "identity", svid.ID)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

// confirmHandler admits an instance whose attestation data is "doc:<instance id>".
func confirmHandler(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "method: only POST is served", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, confirm.MaxRequestBytes))
	if err != nil {
		http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
		return
	}
	req, err := confirm.DecodeRequest(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp := confirm.Response{Allowed: true}
	if string(req.AttestationData) != "doc:"+req.InstanceID {
		resp = confirm.Response{Reason: "attestation_data: not the identity document of instance " + req.InstanceID}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}
