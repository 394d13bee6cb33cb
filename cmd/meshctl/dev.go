//go:build unix

package main

import (
	"context"
	"flag"
	"path/filepath"
	"time"
)

// Defaults of `meshctl dev up`.
const (
	devDefaultNodes       = 3
	devDefaultCertTTL     = time.Minute
	devMinCertTTL         = 10 * time.Second
	devDefaultTrustDomain = "mesh.example"
	devDefaultWait        = 2 * time.Minute
	devDefaultStopTimeout = 20 * time.Second
	devDefaultStatusEvery = 5 * time.Second
)

// devOptions are the flags of `meshctl dev up`.
type devOptions struct {
	// dir holds everything the local cluster writes; made absolute.
	dir string
	// nodes is how many meshca-server processes form the cluster: 1, 3 or 5.
	nodes int
	// certTTL is the workload certificate lifetime: short, so rotations are seen.
	certTTL time.Duration
	// trustDomain is the cluster's.
	trustDomain string
	// binDir is where the binaries are; empty: next to meshctl, else on PATH.
	binDir string
	// wait bounds the wait for everything to be ready.
	wait time.Duration
	// stopTimeout is how long a process has after SIGTERM before SIGKILL.
	stopTimeout time.Duration
	// foreground keeps meshctl attached, streaming a status, until interrupted.
	foreground bool
	// statusEvery is how often the foreground status is refreshed.
	statusEvery time.Duration
}

// check names the first flag that breaks a rule.
func (o *devOptions) check() error {
	switch {
	case o.dir == "":
		return usageError("--dir is required")
	case o.nodes != 1 && o.nodes != 3 && o.nodes != 5:
		return usageError("--nodes %d: a cluster has 1, 3 or 5 nodes", o.nodes)
	case o.certTTL < devMinCertTTL || o.certTTL > 30*24*time.Hour:
		return usageError("--cert-ttl %s must be between %s and 720h", o.certTTL, devMinCertTTL)
	case o.certTTL%time.Second != 0:
		return usageError("--cert-ttl %s must be a whole number of seconds", o.certTTL)
	case o.wait <= 0:
		return usageError("--wait %s must be positive", o.wait)
	case o.stopTimeout <= 0:
		return usageError("--stop-timeout %s must be positive", o.stopTimeout)
	case o.statusEvery <= 0:
		return usageError("--status-every %s must be positive", o.statusEvery)
	}
	abs, err := filepath.Abs(o.dir)
	if err != nil {
		return usageError("--dir %q: %v", o.dir, err)
	}
	o.dir = abs
	return nil
}

// devCommands are `meshctl dev up` and `meshctl dev down`: a local cluster for trying meshca.
func devCommands() []*command {
	return []*command{
		{path: "dev up", summary: "start a local cluster, the example provider, an agent and the demo workloads", maxArgs: 0, noClient: true,
			setup: func(fs *flag.FlagSet) runFunc {
				o := devOptions{}
				fs.StringVar(&o.dir, "dir", "", "folder for the cluster's data, configs, logs, sockets and DIR/env (required)")
				fs.IntVar(&o.nodes, "nodes", devDefaultNodes, "how many CA nodes: 1, 3 or 5")
				fs.DurationVar(&o.certTTL, "cert-ttl", devDefaultCertTTL, "workload certificate lifetime (at least 10s); the agent renews at about half of it")
				fs.StringVar(&o.trustDomain, "trust-domain", devDefaultTrustDomain, "the cluster's SPIFFE trust domain")
				fs.StringVar(&o.binDir, "bin-dir", "", "folder of meshca-server, meshca-agent, provider, demo-server and demo-client (default: next to meshctl, else PATH)")
				fs.DurationVar(&o.wait, "wait", devDefaultWait, "how long to wait for everything to be ready")
				fs.DurationVar(&o.stopTimeout, "stop-timeout", devDefaultStopTimeout, "how long a process has to stop after SIGTERM before SIGKILL")
				fs.BoolVar(&o.foreground, "foreground", false, "stay attached, show rotations, requests and failed handshakes, and stop everything on Ctrl-C")
				fs.DurationVar(&o.statusEvery, "status-every", devDefaultStatusEvery, "with --foreground, how often to show the status")
				return func(ctx context.Context, inv *invocation, _ []string) error {
					if err := o.check(); err != nil {
						return err
					}
					return devUp(ctx, o, inv.app.stdout)
				}
			}},
		{path: "dev down", summary: "stop everything `meshctl dev up` started in a folder", maxArgs: 0, noClient: true,
			setup: func(fs *flag.FlagSet) runFunc {
				dir := fs.String("dir", "", "the folder given to meshctl dev up (required)")
				timeout := fs.Duration("stop-timeout", devDefaultStopTimeout, "how long a process has to stop after SIGTERM before SIGKILL")
				return func(_ context.Context, inv *invocation, _ []string) error {
					if *dir == "" {
						return usageError("--dir is required")
					}
					if *timeout <= 0 {
						return usageError("--stop-timeout %s must be positive", *timeout)
					}
					abs, err := filepath.Abs(*dir)
					if err != nil {
						return usageError("--dir %q: %v", *dir, err)
					}
					return devDown(abs, *timeout, inv.app.stdout)
				}
			}},
	}
}
