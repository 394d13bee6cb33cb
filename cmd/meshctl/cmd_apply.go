package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
)

// Files of one apply entry: DIR/<name>/tls.json and DIR/<name>/csr.pem.
const (
	applySpecFile = "tls.json"
	applyCSRFile  = "csr.pem"
)

// What apply did with an entry.
const (
	applySubmitted = "submitted"
	applyUnchanged = "unchanged"
	applyRefused   = "refused"
)

// applyEntry is one folder of an apply run and what happened to it.
type applyEntry struct {
	name    string
	id      string
	outcome string
	state   string
	detail  string
}

// applyID is the request id an entry is filed under: its name and a digest of its exact spec
// and CSR, so the same files always map to the same request (apply is idempotent) and any
// change to either makes a new request. The digest frames each part with its length, so no
// two different (spec, CSR) pairs share an input.
func applyID(name string, spec, csrDER []byte) string {
	h := sha256.New()
	for _, part := range [][]byte{spec, csrDER} {
		fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	return "apply." + name + "." + hex.EncodeToString(h.Sum(nil))[:24]
}

// applyName checks an entry's folder name, which becomes part of its request id.
func applyName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("entry name %q: want 1 to 64 characters", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("entry name %q: has %q (allowed: letters, digits, '-', '_', '.')", name, c)
		}
	}
	return nil
}

// readApplyDir lists the entries of dir: every sub-folder holding tls.json or csr.pem, in
// name order. A folder missing one of the two is an error, so a half-written entry is never
// skipped silently.
func readApplyDir(dir string) (names []string, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("-f: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		_, specErr := os.Stat(filepath.Join(dir, e.Name(), applySpecFile))
		_, csrErr := os.Stat(filepath.Join(dir, e.Name(), applyCSRFile))
		switch {
		case specErr != nil && csrErr != nil:
			continue // not an entry
		case specErr != nil:
			return nil, fmt.Errorf("-f: entry %s: %w", e.Name(), specErr)
		case csrErr != nil:
			return nil, fmt.Errorf("-f: entry %s: %w", e.Name(), csrErr)
		}
		if err := applyName(e.Name()); err != nil {
			return nil, fmt.Errorf("-f: %w", err)
		}
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if len(names) == 0 {
		return nil, fmt.Errorf("-f: %s holds no <name>/%s + <name>/%s entries", dir, applySpecFile, applyCSRFile)
	}
	return names, nil
}

// applyOne files one entry unless its request already exists.
func applyOne(ctx context.Context, c meshcav1.AdminClient, dir, name string) (applyEntry, error) {
	e := applyEntry{name: name}
	spec, err := os.ReadFile(filepath.Join(dir, name, applySpecFile))
	if err != nil {
		return e, err
	}
	csrPEM, err := os.ReadFile(filepath.Join(dir, name, applyCSRFile))
	if err != nil {
		return e, err
	}
	der, err := ca.DecodeCSR(csrPEM)
	if err != nil {
		e.outcome, e.detail = applyRefused, fmt.Sprintf("%s: not a PEM or DER certificate request: %v", applyCSRFile, err)
		return e, nil
	}
	e.id = applyID(name, spec, der)
	r, err := c.GetCSR(ctx, &meshcav1.GetCSRRequest{Id: e.id})
	switch {
	case err == nil:
		e.outcome, e.state = applyUnchanged, enumName(r.GetState(), "CSR_STATE_")
		return e, nil
	case status.Code(err) != codes.NotFound:
		return e, err
	}
	r, err = c.SubmitCSR(ctx, &meshcav1.SubmitCSRRequest{Csr: der, Spec: spec, Id: e.id})
	switch s, _ := status.FromError(err); {
	case err == nil:
		e.outcome, e.state = applySubmitted, enumName(r.GetState(), "CSR_STATE_")
		e.detail = droppedSANs(spec)
	case s.Code() == codes.Unavailable || s.Code() == codes.Unauthenticated || s.Code() == codes.DeadlineExceeded:
		return e, err // the run cannot go on; not a verdict on this entry
	default:
		e.outcome, e.detail = applyRefused, s.Code().String()+": "+s.Message()
	}
	return e, nil
}

// droppedSANs reports the spec SANs the CA leaves out of the certificate (invalid DNS names,
// duplicates), by the same rule it applies (policy.Spec.DNSNames); "" when none is dropped or
// the spec does not decode (the server has accepted it, so it does).
func droppedSANs(specJSON []byte) string {
	spec, err := policy.DecodeSpec(specJSON)
	if err != nil {
		return ""
	}
	_, dropped := spec.DNSNames()
	var parts []string
	for _, d := range dropped {
		parts = append(parts, "dropped SAN "+d.String())
	}
	return strings.Join(parts, "; ")
}

// applyResult is the run's report as a message for JSON output.
func applyResult(entries []applyEntry) (*structpb.Struct, error) {
	list := make([]any, 0, len(entries))
	for _, e := range entries {
		list = append(list, map[string]any{"name": e.name, "id": e.id, "outcome": e.outcome, "state": e.state, "detail": e.detail})
	}
	return structpb.NewStruct(map[string]any{"entries": list})
}

func applyCommands() []*command {
	return []*command{
		{path: "apply", summary: "file the certificate requests of a folder of <name>/tls.json + <name>/csr.pem; unchanged ones are left alone", maxArgs: 0,
			setup: func(fs *flag.FlagSet) runFunc {
				dir := fs.String("f", "", "the folder (required)")
				return func(ctx context.Context, inv *invocation, _ []string) error {
					if *dir == "" {
						return usageError("-f is required")
					}
					names, err := readApplyDir(*dir)
					if err != nil {
						return err
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					var entries []applyEntry
					refused := 0
					for _, name := range names {
						e, err := applyOne(ctx, c, *dir, name)
						if err != nil {
							return fmt.Errorf("entry %s: %w", name, err)
						}
						if e.outcome == applyRefused {
							refused++
						}
						entries = append(entries, e)
					}
					msg, err := applyResult(entries)
					if err != nil {
						return err
					}
					if err := inv.print(msg, func(t *table) {
						t.row("NAME", "OUTCOME", "ID", "STATE", "DETAIL")
						for _, e := range entries {
							t.row(e.name, e.outcome, orDash(e.id), orDash(strings.ToLower(e.state)), orDash(e.detail))
						}
					}); err != nil {
						return err
					}
					if refused > 0 {
						return fmt.Errorf("%w: %d of %d entries refused", errApplyRefused, refused, len(entries))
					}
					return nil
				}
			}},
	}
}

// errApplyRefused means at least one entry of an apply run was refused; the report names them.
var errApplyRefused = errors.New("apply")
