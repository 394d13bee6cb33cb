// Command demo-server is a demo workload: an HTTPS server that takes its certificate and trust
// bundle from meshca-agent (over SDS or the SPIFFE Workload API), requires a client certificate
// of its trust domain (or exactly -peer-id), and answers GET /hello with the client's SPIFFE ID.
// Rotations are followed without a restart; each is logged, and so is every failed handshake.
//
//	demo-server [-listen 127.0.0.1:8443] [-source sds|workload-api]
//	            [-sds-socket PATH] [-workload-api unix:///PATH] [-peer-id SPIFFE-ID] [-stats ADDR]
//
// -sds-socket and -workload-api default to $MESHCA_SDS_SOCKET and $MESHCA_WORKLOAD_API. With
// -stats, GET http://ADDR/stats answers the counts as JSON.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/meshca/meshca/examples/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "demo-server:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo-server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8443", "HTTPS address to serve on")
	source := fs.String("source", demo.SourceSDS, "where the TLS material comes from: sds or workload-api")
	sdsSocket := fs.String("sds-socket", os.Getenv("MESHCA_SDS_SOCKET"), "the agent's SDS socket")
	workloadAPI := fs.String("workload-api", os.Getenv("MESHCA_WORKLOAD_API"), "the agent's Workload API address (unix:///path)")
	peerID := fs.String("peer-id", "", "the only client SPIFFE ID served (default: any of the own trust domain)")
	stats := fs.String("stats", "", "loopback address for GET /stats (JSON counts); none when empty")
	wait := fs.Duration("wait", time.Minute, "how long to wait for the first certificate")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	wctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	srv, err := demo.NewServer(wctx, demo.ServerConfig{
		Listen:      *listen,
		Source:      demo.SourceConfig{Kind: *source, SDSSocket: *sdsSocket, WorkloadAPIAddr: *workloadAPI},
		AllowedPeer: *peerID,
		Logger:      log,
	})
	if err != nil {
		return err
	}
	if *stats != "" {
		l, err := net.Listen("tcp", *stats)
		if err != nil {
			return err
		}
		log.Info("demo: stats", "url", "http://"+l.Addr().String()+"/stats")
		hs := &http.Server{Handler: demo.StatsHandler(srv.Stats), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = hs.Serve(l) }()
		defer hs.Close()
	}
	log.Info("demo: serving", "addr", "https://"+srv.Addr()+"/hello", "source", *source)
	err = srv.Serve(ctx)
	st := srv.Stats()
	log.Info("demo: stopped", "requests", st.Requests, "handshake_failures", st.HandshakeFailures, "rotations", st.Rotations)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
