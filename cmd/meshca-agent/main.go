// Command meshca-agent is the node agent: it keeps the certificates of the workload identities of
// one host, with keys generated on the host, and serves them and the cluster's trust bundles
// over SDS (to Envoy), the SPIFFE Workload API and files.
//
//	meshca-agent -config /etc/meshca/agent.yaml [-log-level info] [-log-format text|json]
//
// SIGTERM or SIGINT stops it gracefully. It exits 2 for a bad command line or config, 1 for any
// other failure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshca/meshca/sds/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

// errUsage marks a bad command line.
var errUsage = errors.New("usage")

// run parses the command line, loads the config and runs the agent until ctx ends. It returns
// the exit code.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	logger, cfg, err := setup(args, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "meshca-agent:", err)
		if errors.Is(err, errUsage) || errors.Is(err, agent.ErrConfig) {
			return 2
		}
		return 1
	}
	if err := agent.Run(ctx, cfg, agent.Options{Logger: logger}); err != nil {
		fmt.Fprintln(stderr, "meshca-agent:", err)
		if errors.Is(err, agent.ErrConfig) {
			return 2
		}
		return 1
	}
	return 0
}

func setup(args []string, stderr io.Writer) (*slog.Logger, *agent.Config, error) {
	fs := flag.NewFlagSet("meshca-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path of the YAML configuration file (required)")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	format := fs.String("log-format", "text", "log format: text or json")
	if err := fs.Parse(args); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	if *configPath == "" || fs.NArg() > 0 {
		fs.Usage()
		return nil, nil, fmt.Errorf("%w: -config is required and no arguments are taken", errUsage)
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return nil, nil, fmt.Errorf("%w: -log-level: %w", errUsage, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	var logger *slog.Logger
	switch *format {
	case "text":
		logger = slog.New(slog.NewTextHandler(stderr, opts))
	case "json":
		logger = slog.New(slog.NewJSONHandler(stderr, opts))
	default:
		return nil, nil, fmt.Errorf("%w: -log-format: %q is not text or json", errUsage, *format)
	}
	cfg, err := agent.LoadConfig(*configPath)
	if err != nil {
		return nil, nil, err
	}
	return logger, cfg, nil
}
