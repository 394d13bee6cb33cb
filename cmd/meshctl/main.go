// Command meshctl administers a meshca cluster over its admin API, authenticated with an
// admin's client certificate:
//
//	meshctl [--addr HOST:PORT --cert FILE --key FILE --ca-bundle FILE] <command> [flags] [args]
//
// The connection settings come from the flags, else MESHCA_ADMIN_ADDR, MESHCA_ADMIN_CERT,
// MESHCA_ADMIN_KEY and MESHCA_CA_BUNDLE, else the YAML config file. "meshctl help" lists the
// commands; every failure is one line on standard error and a non-zero exit status.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := newApp(os.Stdout, os.Stderr, os.Getenv).run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
