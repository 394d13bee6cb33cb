// Command provider is an example launcher service for meshca (Athenz Copper Argos): it hands
// the instances it launches signed identity documents, and confirms to the CA, over mutual TLS,
// that an instance may have the identity it asks for.
//
//	provider keygen -key FILE
//	provider issue  -key FILE -trust-domain TD -domain D -service S -instance ID
//	                [-provider sys.auth.example] [-ttl 5m] [-out FILE]
//	provider serve  -key FILE -trust-domain TD -tls-cert FILE -tls-key FILE -tls-bundle FILE
//	                [-provider sys.auth.example] [-listen 127.0.0.1:8444] [-max-ttl 0]
//	                [-ops-listen 127.0.0.1:9444]
//
// keygen makes the provider's document key (ECDSA P-256, PKCS#8 PEM, 0600). issue prints a
// document (an ES256 JWT) for one instance on standard output, or writes it to -out; a node
// agent can run it as its identity_document command. serve answers the CA's confirm requests at
// POST /confirm with the server certificate, key and trust bundle of the -tls-* files (meshca
// issued them to the provider's own identity; they are read again when replaced), admitting
// only CA nodes of the trust domain; with -ops-listen it also serves /metrics
// (meshca_provider_confirmations_total), /healthz and /readyz (a valid certificate and a
// bundle are loaded) over plain HTTP. SIGTERM or SIGINT stops it. It exits 2 for a bad command
// line, 1 for any other failure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/examples/provider/launcher"
	"github.com/meshca/meshca/sds"
)

// DefaultProvider is the provider's service identity unless -provider says otherwise.
const DefaultProvider = "sys.auth.example"

// errUsage marks a bad command line.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "provider:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

const usage = `usage:
  provider keygen -key FILE
  provider issue  -key FILE -trust-domain TD -domain D -service S -instance ID [-provider P] [-ttl 5m] [-out FILE]
  provider serve  -key FILE -trust-domain TD -tls-cert FILE -tls-key FILE -tls-bundle FILE [-provider P] [-listen ADDR] [-max-ttl D] [-ops-listen ADDR]`

// run runs one subcommand.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: a subcommand is required\n%s", errUsage, usage)
	}
	switch args[0] {
	case "keygen":
		return keygen(args[1:], stderr)
	case "issue":
		return issue(args[1:], stdout, stderr, time.Now())
	case "serve":
		return serve(ctx, args[1:], stderr)
	}
	return fmt.Errorf("%w: unknown subcommand %q\n%s", errUsage, args[0], usage)
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("provider "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses args and checks that every flag in required was given a value.
func parse(fs *flag.FlagSet, args []string, required ...string) error {
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	for _, name := range required {
		if fs.Lookup(name).Value.String() == "" {
			return fmt.Errorf("%w: -%s is required", errUsage, name)
		}
	}
	return nil
}

func keygen(args []string, stderr io.Writer) error {
	fs := newFlagSet("keygen", stderr)
	keyFile := fs.String("key", "", "where to write the new document key (must not exist)")
	if err := parse(fs, args, "key"); err != nil {
		return err
	}
	key, err := launcher.GenerateKey()
	if err != nil {
		return err
	}
	return launcher.WriteKeyFile(*keyFile, key)
}

func issue(args []string, stdout, stderr io.Writer, now time.Time) error {
	fs := newFlagSet("issue", stderr)
	keyFile := fs.String("key", "", "the provider's document key")
	provider := fs.String("provider", DefaultProvider, "the provider's service identity (the document's issuer)")
	td := fs.String("trust-domain", "", "the cluster's trust domain (the document's audience)")
	domain := fs.String("domain", "", "the instance's domain")
	service := fs.String("service", "", "the instance's service")
	instance := fs.String("instance", "", "the instance's id in the provider's namespace")
	ttl := fs.Duration("ttl", launcher.DefaultDocumentTTL, "how long the document is valid")
	out := fs.String("out", "", "write the document to this file (0600) instead of standard output")
	if err := parse(fs, args, "key", "trust-domain", "domain", "service", "instance"); err != nil {
		return err
	}
	if *ttl <= 0 {
		return fmt.Errorf("%w: -ttl %s must be positive", errUsage, *ttl)
	}
	key, err := launcher.ReadKeyFile(*keyFile)
	if err != nil {
		return err
	}
	iss, err := launcher.NewIssuer(*provider, *td, key)
	if err != nil {
		return err
	}
	doc, err := iss.Issue(launcher.Instance{Domain: *domain, Service: *service, InstanceID: *instance}, now, *ttl)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err := fmt.Fprintln(stdout, doc)
		return err
	}
	return sds.WriteFileAtomic(*out, []byte(doc+"\n"), 0o600)
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	keyFile := fs.String("key", "", "the provider's document key")
	provider := fs.String("provider", DefaultProvider, "the provider's service identity")
	tdName := fs.String("trust-domain", "", "the cluster's trust domain")
	listen := fs.String("listen", "127.0.0.1:8444", "address of the confirm endpoint (HTTPS, mutual TLS)")
	certFile := fs.String("tls-cert", "", "the provider's certificate chain (PEM), issued by meshca to the provider's identity")
	tlsKeyFile := fs.String("tls-key", "", "the certificate's private key (PKCS#8 PEM)")
	bundleFile := fs.String("tls-bundle", "", "the trust domain's root certificates (PEM)")
	maxTTL := fs.Duration("max-ttl", 0, "cap the lifetime of confirmed certificates (0: leave it to the CA)")
	opsListen := fs.String("ops-listen", "", "plain-HTTP address (keep it on loopback) for /metrics, /healthz and /readyz; none when empty")
	if err := parse(fs, args, "key", "trust-domain", "tls-cert", "tls-key", "tls-bundle"); err != nil {
		return err
	}
	if *maxTTL < 0 || *maxTTL%time.Second != 0 {
		return fmt.Errorf("%w: -max-ttl %s must be a non-negative whole number of seconds", errUsage, *maxTTL)
	}
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return fmt.Errorf("%w: -trust-domain %q: %w", errUsage, *tdName, err)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	key, err := launcher.ReadKeyFile(*keyFile)
	if err != nil {
		return err
	}
	verifier, err := launcher.NewVerifier(*provider, td.Name(), &key.PublicKey)
	if err != nil {
		return err
	}
	src, err := launcher.NewFileSource(td, *certFile, *tlsKeyFile, *bundleFile, log)
	if err != nil {
		return err
	}
	if own, _ := src.GetX509SVID(); own != nil {
		want, err := controlplane.ServiceSPIFFEID(td, *provider)
		if err != nil {
			return fmt.Errorf("%w: -provider: %w", errUsage, err)
		}
		if own.ID != want {
			return fmt.Errorf("-tls-cert %s names %s, but the CA accepts only %s as provider %s", *certFile, own.ID, want, *provider)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := launcher.NewMetrics(reg)
	if err != nil {
		return err
	}
	h := &launcher.Handler{Policy: &launcher.Policy{Provider: *provider, Verifier: verifier, MaxTTL: *maxTTL}, Log: log, Metrics: metrics}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	servers := []*http.Server{launcher.NewHTTPServer(h, src, td, log)}
	errc := make(chan error, 2)
	go func() { errc <- servers[0].ServeTLS(ln, "", "") }()
	log.Info("provider: serving", "provider", *provider, "confirm", "https://"+ln.Addr().String()+launcher.ConfirmPath)
	if *opsListen != "" {
		opsLn, err := net.Listen("tcp", *opsListen)
		if err != nil {
			servers[0].Close()
			return fmt.Errorf("-ops-listen: %w", err)
		}
		ops := &http.Server{Handler: launcher.OpsHandler(reg, src, time.Now), ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, ops)
		go func() { errc <- ops.Serve(opsLn) }()
		log.Info("provider: operations", "url", "http://"+opsLn.Addr().String())
	}
	var failed error
	select {
	case failed = <-errc:
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
	}
	if failed != nil {
		return failed
	}
	for range servers {
		if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	c := h.Counts()
	log.Info("provider: stopped", "allowed", c.Allowed, "refused", c.Refused, "rejected", c.Rejected)
	return nil
}
