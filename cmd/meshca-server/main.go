// Command meshca-server runs one node of a meshca cluster: a certificate authority whose state
// is replicated with Raft, serving the identity API, the bundle SDS and the HTTPS endpoints.
//
//	meshca-server -config /etc/meshca/server.yaml [-log-level info] [-log-format text|json]
//
// SIGTERM or SIGINT stops it gracefully.
//
//	meshca-server ca csr --pkcs11-module M --token-label T --key-label L --pin-file F \
//	    --trust-domain TD --out csr.pem
//
// generates the cluster's intermediate CA key on a PKCS#11 token (or finds it by label) and
// writes the CSR it signed, for `meshctl ca sign-intermediate --csr`; the key never leaves
// the token.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshca/meshca/controlplane"
)

func main() {
	var err error
	if len(os.Args) > 1 && os.Args[1] == "ca" {
		err = runCA(os.Args[2:], os.Stdout, os.Stderr)
	} else {
		err = run()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshca-server:", err)
		os.Exit(1)
	}
}

func run() error {
	configPath := flag.String("config", "", "path of the YAML configuration file (required)")
	level := flag.String("log-level", "info", "log level: debug, info, warn, error")
	format := flag.String("log-format", "text", "log format: text or json")
	flag.Parse()
	if *configPath == "" || flag.NArg() > 0 {
		flag.Usage()
		return fmt.Errorf("-config is required and no arguments are taken")
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch *format {
	case "text":
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, opts)))
	case "json":
		slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, opts)))
	default:
		return fmt.Errorf("-log-format: %q is not text or json", *format)
	}
	cfg, err := controlplane.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return controlplane.Run(ctx, cfg)
}
