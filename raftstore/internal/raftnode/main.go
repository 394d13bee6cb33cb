// Command raftnode runs one raftstore.Node with the real state machine as its own process, for
// the process-level tests: kill it, restart it from its data dir, and drive it over a small
// HTTP endpoint bound to 127.0.0.1.
//
// Once the node runs it prints one line to stdout:
//
//	READY cluster=<host:port> http=<host:port>
//
// Endpoints:
//
//	POST /propose?timeout=10s   body: a marshaled meshca.v1.Command; answers the marshaled
//	                            meshca.v1.CommandResult (200), 503 when the cluster is
//	                            unavailable, 500 on any other error
//	GET  /state                 {"hash": "<hex>", "applied_index": n, "domains": n}
//	POST /missing-domains       body: domain names, one a line; answers the absent ones (JSON)
//	GET  /instance?provider=&domain=&service=&id=   the instance record (protojson)
//	GET  /status                the node's raftstore.Status (JSON)
//	POST /join?id=&addr=        adds a voter (forwarded to the leader)
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshca/meshca/raftstore"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "raftnode:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		id        = flag.String("id", "", "node id")
		dataDir   = flag.String("data", "", "data directory")
		addr      = flag.String("addr", "127.0.0.1:0", "cluster listen address")
		httpAddr  = flag.String("http", "127.0.0.1:0", "control HTTP listen address (loopback)")
		td        = flag.String("trust-domain", "mesh.example", "SPIFFE trust domain")
		certs     = flag.String("certs", "", "directory with node.crt, node.key and ca.crt")
		bootstrap = flag.Bool("bootstrap", false, "form a new cluster from -peers (or alone) if the data dir is empty")
		peers     = flag.String("peers", "", "initial peers for -bootstrap: id=host:port,...")
		logLevel  = flag.String("log-level", "info", "debug, info, warn or error")
	)
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	trustDomain, err := spiffeid.TrustDomainFromString(*td)
	if err != nil {
		return fmt.Errorf("-trust-domain: %w", err)
	}
	svid, err := x509svid.Load(filepath.Join(*certs, "node.crt"), filepath.Join(*certs, "node.key"))
	if err != nil {
		return fmt.Errorf("-certs: %w", err)
	}
	bundle, err := x509bundle.Load(trustDomain, filepath.Join(*certs, "ca.crt"))
	if err != nil {
		return fmt.Errorf("-certs: %w", err)
	}

	cfg := raftstore.DefaultNodeConfig()
	cfg.ID, cfg.DataDir, cfg.BindAddr = *id, *dataDir, *addr
	cfg.TrustDomain, cfg.SVID, cfg.Bundle = *td, svid, bundle
	cfg.Bootstrap = *bootstrap
	cfg.Logger = logger
	if *peers != "" {
		for _, p := range strings.Split(*peers, ",") {
			pid, paddr, ok := strings.Cut(p, "=")
			if !ok {
				return fmt.Errorf("-peers: %q is not id=host:port", p)
			}
			cfg.InitialPeers = append(cfg.InitialPeers, raftstore.Peer{ID: pid, Address: paddr})
		}
	}

	fsmCfg := raftstore.DefaultFSMConfig()
	fsmCfg.Logger = logger
	fsm, err := raftstore.NewFSM(fsmCfg)
	if err != nil {
		return err
	}
	node, err := raftstore.NewNode(cfg, fsm)
	if err != nil {
		return err
	}
	defer node.Shutdown()

	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("-http: %w", err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		ln.Close()
		return fmt.Errorf("-http: %s is not a loopback address", ln.Addr())
	}
	srv := &http.Server{Handler: handler(node, fsm), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	fmt.Printf("READY cluster=%s http=%s\n", node.Addr(), ln.Addr())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		logger.Info("stopping", "signal", s.String())
	case err := <-serveErr:
		return fmt.Errorf("http: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	return node.Shutdown()
}

func handler(node *raftstore.Node, fsm *raftstore.FSM) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /propose", func(w http.ResponseWriter, r *http.Request) {
		timeout := 10 * time.Second
		if v := r.URL.Query().Get("timeout"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				http.Error(w, "timeout: "+err.Error(), http.StatusBadRequest)
				return
			}
			timeout = d
		}
		cmd, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		res, err := node.Propose(ctx, cmd)
		switch {
		case errors.Is(err, raftstore.ErrUnavailable):
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(res)
		}
	})
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) {
		st := fsm.State()
		hash := st.Hash()
		writeJSON(w, map[string]any{
			"hash":          hex.EncodeToString(hash[:]),
			"applied_index": st.AppliedIndex(),
			"domains":       len(st.Domains()),
		})
	})
	mux.HandleFunc("POST /missing-domains", func(w http.ResponseWriter, r *http.Request) {
		st := fsm.State()
		missing := []string{}
		sc := bufio.NewScanner(r.Body)
		for sc.Scan() {
			name := strings.TrimSpace(sc.Text())
			if name == "" {
				continue
			}
			if _, err := st.Domain(name); err != nil {
				missing = append(missing, name)
			}
		}
		if err := sc.Err(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, missing)
	})
	mux.HandleFunc("GET /instance", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		inst, err := fsm.State().Instance(q.Get("provider"), q.Get("domain"), q.Get("service"), q.Get("id"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		b, err := protojson.Marshal(inst)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, node.Status())
	})
	mux.HandleFunc("POST /join", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		if err := node.Join(ctx, r.URL.Query().Get("id"), r.URL.Query().Get("addr")); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}
