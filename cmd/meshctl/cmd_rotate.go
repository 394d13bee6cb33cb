package main

import (
	"context"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// rotateCommands is `meshctl ca rotate`: one step of a CA rotation, or the whole of it with
// --auto.
func rotateCommands() []*command {
	return []*command{
		{path: "ca rotate", args: "[prepare|activate|retire|status]", maxArgs: 1, stream: true,
			summary: "rotate the CA: prepare a new root beside the old, activate it, retire the old one; --auto runs every step",
			setup: func(fs *flag.FlagSet) runFunc {
				auto := fs.Bool("auto", false, "run prepare, wait for every node, activate, wait for the old issuer's certificates to expire, retire")
				var nodes stringList
				fs.Var(&nodes, "node", "with --auto: the gRPC address of a node that must serve the new bundle before activate (repeatable; default the --addr node)")
				poll := fs.Duration("poll", 2*time.Second, "with --auto: how often to look again while waiting")
				issuer := fs.String("issuer", "", "activate: the prepared issuer's id (default the prepared one)")
				reissue := fs.Bool("reissue", false, "activate, --auto: agents replace every certificate the new issuer did not sign now (within a few seconds' jitter), not on their schedule")
				root := fs.String("root", "", "retire: the hex SHA-256 of the root to drop (default the oldest retirable one)")
				bundleOut := fs.String("bundle-out", "", "write the trust bundle the step leaves (PEM, newest root first) to this file, for --ca-bundle and agents' trust_bundle")
				return func(ctx context.Context, inv *invocation, args []string) error {
					switch {
					case *auto && len(args) > 0:
						return usageError("--auto runs every step; name no step")
					case !*auto && len(args) == 0:
						return usageError("name a step (prepare, activate, retire, status) or give --auto")
					case *poll <= 0:
						return usageError("--poll: %s, want a positive duration", *poll)
					case *reissue && !*auto && args[0] != "activate":
						return usageError("--reissue: only with activate or --auto, not %s", args[0])
					}
					if _, err := inv.admin(); err != nil {
						return err
					}
					r := rotator{inv: inv, c: meshcav1.NewCARotationClient(inv.dialed.conn)}
					if *auto {
						st, err := r.auto(ctx, nodes, *poll, *reissue)
						if err != nil {
							return err
						}
						if err := writeBundle(*bundleOut, st); err != nil {
							return err
						}
						return r.inv.print(st, func(t *table) { renderRotation(t, st) })
					}
					var st *meshcav1.RotationStatus
					var err error
					switch args[0] {
					case "prepare":
						st, err = call(ctx, inv, func(ctx context.Context) (*meshcav1.RotationStatus, error) {
							return r.c.Prepare(ctx, &meshcav1.PrepareRotationRequest{})
						})
					case "activate":
						st, err = call(ctx, inv, func(ctx context.Context) (*meshcav1.RotationStatus, error) {
							return r.c.Activate(ctx, &meshcav1.ActivateRotationRequest{IssuerId: *issuer, Reissue: *reissue})
						})
					case "retire":
						st, err = call(ctx, inv, func(ctx context.Context) (*meshcav1.RotationStatus, error) {
							return r.c.Retire(ctx, &meshcav1.RetireRotationRequest{RootSha256: *root})
						})
					case "status":
						st, err = r.status(ctx)
					default:
						return usageError("step %q: want prepare, activate, retire or status", args[0])
					}
					if err != nil {
						return err
					}
					if err := writeBundle(*bundleOut, st); err != nil {
						return err
					}
					return inv.print(st, func(t *table) { renderRotation(t, st) })
				}
			}},
	}
}

// call runs one call under the per-call deadline (the command itself has none, for --auto).
func call[T any](ctx context.Context, inv *invocation, f func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, inv.settings.timeout)
	defer cancel()
	return f(ctx)
}

// rotator runs the steps of a rotation against one node.
type rotator struct {
	inv *invocation
	c   meshcav1.CARotationClient
}

func (r rotator) status(ctx context.Context) (*meshcav1.RotationStatus, error) {
	return call(ctx, r.inv, func(ctx context.Context) (*meshcav1.RotationStatus, error) {
		return r.c.Status(ctx, &meshcav1.RotationStatusRequest{})
	})
}

// say prints one line of --auto's progress.
func (r rotator) say(format string, args ...any) {
	fmt.Fprintf(r.inv.app.stdout, "%s  %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
}

// auto runs a whole rotation: prepare (unless one is prepared), wait until every node serves
// the new root, activate (with reissue, agents replace the old issuer's certificates at once),
// wait until the old issuer's last certificate expired, retire. Each wait polls until ctx ends.
func (r rotator) auto(ctx context.Context, nodes []string, poll time.Duration, reissue bool) (*meshcav1.RotationStatus, error) {
	st, err := r.status(ctx)
	if err != nil {
		return nil, err
	}
	next := st.GetCa().GetNextIssuer()
	if next == nil {
		if st, err = call(ctx, r.inv, func(ctx context.Context) (*meshcav1.RotationStatus, error) {
			return r.c.Prepare(ctx, &meshcav1.PrepareRotationRequest{})
		}); err != nil {
			return nil, fmt.Errorf("prepare: %w", err)
		}
		next = st.GetCa().GetNextIssuer()
		r.say("prepared: next issuer %s, new root %s published beside the old", short(next.GetId()), short(next.GetRootSha256()))
	} else {
		r.say("a rotation is already prepared: next issuer %s", short(next.GetId()))
	}
	if len(nodes) == 0 {
		nodes = []string{r.inv.settings.addr}
	}
	for _, addr := range nodes {
		if err := r.waitBundle(ctx, addr, next.GetRootSha256(), poll); err != nil {
			return nil, err
		}
		r.say("node %s serves the new root", addr)
	}
	if st, err = call(ctx, r.inv, func(ctx context.Context) (*meshcav1.RotationStatus, error) {
		return r.c.Activate(ctx, &meshcav1.ActivateRotationRequest{IssuerId: next.GetId(), Reissue: reissue})
	}); err != nil {
		return nil, fmt.Errorf("activate: %w", err)
	}
	r.say("activated: new certificates are signed by issuer %s", short(next.GetId()))
	if reissue {
		r.say("reissue requested: agents replace every certificate the old issuer signed now")
	}
	for {
		roots := st.GetRetirableRoots()
		if len(roots) == 0 {
			r.say("done: the bundle holds only roots an active issuer uses")
			return st, nil
		}
		old := roots[0]
		if at := old.GetRetireAfter(); at != 0 {
			r.say("waiting until %s (the last certificate under root %s expires) to retire it", seconds(at), short(old.GetSha256()))
		}
		for {
			st, err = call(ctx, r.inv, func(ctx context.Context) (*meshcav1.RotationStatus, error) {
				return r.c.Retire(ctx, &meshcav1.RetireRotationRequest{RootSha256: old.GetSha256()})
			})
			if !notYet(err) {
				break
			}
			if err := wait(ctx, poll); err != nil {
				return nil, fmt.Errorf("retire root %s: %w", old.GetSha256(), err)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("retire: %w", err)
		}
		r.say("retired root %s", short(old.GetSha256()))
	}
}

// notYet reports whether a retire was refused only because a certificate under the root may
// still be valid: the refusal --auto waits out. Any other refusal ends the run.
func notYet(err error) bool {
	s := status.Convert(err)
	return s.Code() == codes.FailedPrecondition &&
		(strings.Contains(s.Message(), "retire becomes possible at") || strings.Contains(s.Message(), "drop the root after that"))
}

// waitBundle polls the node at addr until its CA record holds the root sum.
func (r rotator) waitBundle(ctx context.Context, addr, sum string, poll time.Duration) error {
	s := r.inv.settings
	s.addr = addr
	d, err := dial(s)
	if err != nil {
		return fmt.Errorf("--node %s: %w", addr, err)
	}
	defer d.conn.Close()
	c := meshcav1.NewCARotationClient(d.conn)
	for {
		st, err := call(ctx, r.inv, func(ctx context.Context) (*meshcav1.RotationStatus, error) {
			return c.Status(ctx, &meshcav1.RotationStatusRequest{})
		})
		if err == nil && slices.ContainsFunc(st.GetCa().GetRoots(), func(root *meshcav1.CARoot) bool { return root.GetSha256() == sum }) {
			return nil
		}
		if err := wait(ctx, poll); err != nil {
			return fmt.Errorf("waiting for node %s to serve root %s: %w", addr, sum, err)
		}
	}
}

// wait waits d or until ctx ends.
func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// writeBundle writes the roots of st as PEM to path; an empty path writes nothing.
func writeBundle(path string, st *meshcav1.RotationStatus) error {
	if path == "" {
		return nil
	}
	var out []byte
	for _, r := range st.GetCa().GetRoots() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.GetDer()})...)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return fmt.Errorf("--bundle-out: %w", err)
	}
	return nil
}

// renderRotation draws a rotation status as a table.
func renderRotation(t *table, st *meshcav1.RotationStatus) {
	s := st.GetCa()
	t.row("rotation", enumName(s.GetRotationState(), "CA_ROTATION_STATE_"))
	if r := st.GetReissue(); r != nil {
		t.row("reissue", "requested "+seconds(r.GetRequested())+": agents replace every certificate issuer "+short(r.GetIssuerId())+" did not sign now")
	}
	t.row("")
	t.row("ROOT", "SHA-256", "SUBJECT", "", "NOT AFTER")
	for i, r := range s.GetRoots() {
		t.row(fmt.Sprint(i), short(r.GetSha256()), r.GetSubject(), "", seconds(r.GetNotAfter()))
	}
	t.row("")
	t.row("ISSUER", "ID", "SUBJECT", "KEY", "NOT AFTER", "LAST ISSUED EXPIRES")
	if s.GetActiveIssuer() != nil {
		issuerRow(t, "active", s.GetActiveIssuer())
	}
	if s.GetNextIssuer() != nil {
		issuerRow(t, "next", s.GetNextIssuer())
	}
	for _, is := range s.GetRetiredIssuers() {
		issuerRow(t, "retired", is)
	}
	if len(st.GetRetirableRoots()) > 0 {
		t.row("")
		t.row("RETIRABLE ROOT", "SHA-256", "SUBJECT", "", "RETIRE FROM")
		for _, r := range st.GetRetirableRoots() {
			t.row("", short(r.GetSha256()), r.GetSubject(), "", seconds(r.GetRetireAfter()))
		}
	}
}
