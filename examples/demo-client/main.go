// Command demo-client is a demo workload: it takes its certificate and trust bundle from
// meshca-agent (over SDS or the SPIFFE Workload API) and calls demo-server over mutual TLS, a new
// connection per request, checking that the server is -server-id. Rotations are followed without
// a restart; each is logged, and so is every failed handshake and request.
//
//	demo-client -server-id SPIFFE-ID [-url https://127.0.0.1:8443/hello] [-interval 100ms]
//	            [-count N] [-source sds|workload-api] [-sds-socket PATH]
//	            [-workload-api unix:///PATH] [-stats ADDR]
//
// With -count it stops after N requests and exits 1 if any failed. -sds-socket and
// -workload-api default to $MESHCA_SDS_SOCKET and $MESHCA_WORKLOAD_API. With -stats,
// GET http://ADDR/stats answers the counts as JSON.
package main

import (
	"context"
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
		fmt.Fprintln(os.Stderr, "demo-client:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo-client", flag.ContinueOnError)
	url := fs.String("url", "https://127.0.0.1:8443/hello", "the server's hello URL")
	serverID := fs.String("server-id", "", "the SPIFFE ID the server must present (required)")
	interval := fs.Duration("interval", 100*time.Millisecond, "pause between requests")
	count := fs.Int("count", 0, "stop after this many requests (0: until interrupted)")
	source := fs.String("source", demo.SourceSDS, "where the TLS material comes from: sds or workload-api")
	sdsSocket := fs.String("sds-socket", os.Getenv("MESHCA_SDS_SOCKET"), "the agent's SDS socket")
	workloadAPI := fs.String("workload-api", os.Getenv("MESHCA_WORKLOAD_API"), "the agent's Workload API address (unix:///path)")
	stats := fs.String("stats", "", "loopback address for GET /stats (JSON counts); none when empty")
	wait := fs.Duration("wait", time.Minute, "how long to wait for the first certificate")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *serverID == "" {
		return fmt.Errorf("-server-id is required")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	wctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	c, err := demo.NewClient(wctx, demo.ClientConfig{
		URL: *url, ServerID: *serverID, Interval: *interval, Count: *count,
		Source: demo.SourceConfig{Kind: *source, SDSSocket: *sdsSocket, WorkloadAPIAddr: *workloadAPI},
		Logger: log,
	})
	if err != nil {
		return err
	}
	defer c.Close()
	if *stats != "" {
		l, err := net.Listen("tcp", *stats)
		if err != nil {
			return err
		}
		log.Info("demo: stats", "url", "http://"+l.Addr().String()+"/stats")
		hs := &http.Server{Handler: demo.StatsHandler(c.Stats), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = hs.Serve(l) }()
		defer hs.Close()
	}
	log.Info("demo: calling", "url", *url, "server_id", *serverID, "source", *source)
	if err := c.Run(ctx); err != nil {
		return err
	}
	st := c.Stats()
	log.Info("demo: stopped", "requests", st.Requests, "failures", st.Failures, "handshake_failures", st.HandshakeFailures, "rotations", st.Rotations)
	if *count > 0 && (st.Failures > 0 || st.HandshakeFailures > 0) {
		return fmt.Errorf("%d of %d requests failed, %d handshakes failed", st.Failures, *count, st.HandshakeFailures)
	}
	return nil
}
