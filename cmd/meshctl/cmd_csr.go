package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca/policy"
)

func csrRows(t *table, rs ...*meshcav1.CSRRequest) {
	t.row("ID", "STATE", "COMMON NAME", "SUBMITTER", "SUBMITTED", "APPROVER", "SERIAL")
	for _, r := range rs {
		cn := "-"
		var spec policy.Spec
		if json.Unmarshal(r.GetSpec(), &spec) == nil && spec.CommonName != "" {
			cn = spec.CommonName
		}
		t.row(r.GetId(), enumName(r.GetState(), "CSR_STATE_"), cn, r.GetSubmitter(), nanos(r.GetSubmitted()), orDash(r.GetApprover()), orDash(r.GetSerial()))
	}
}

// csrStates maps the --state names to states.
var csrStates = map[string]meshcav1.CSRState{
	"": meshcav1.CSRState_CSR_STATE_UNSPECIFIED, "all": meshcav1.CSRState_CSR_STATE_UNSPECIFIED,
	"pending": meshcav1.CSRState_CSR_STATE_PENDING, "approved": meshcav1.CSRState_CSR_STATE_APPROVED,
	"denied": meshcav1.CSRState_CSR_STATE_DENIED, "issued": meshcav1.CSRState_CSR_STATE_ISSUED,
}

// writeCert writes an issued request's certificate as PEM to path.
func writeCert(r *meshcav1.CSRRequest, path string) error {
	if len(r.GetCert()) == 0 {
		return fmt.Errorf("--out: csr request %s has no certificate (it is %s)", r.GetId(), enumName(r.GetState(), "CSR_STATE_"))
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.GetCert()}), 0o600)
}

// writeCertDir writes an issued request's certificate to dir as cert.pem (the certificate)
// and chain.pem (the certificate followed by the CA certificates of the trust bundle it
// verifies to, leaf first), both 0600. roots are the bundle's DER certificates. It returns the
// paths written.
func writeCertDir(r *meshcav1.CSRRequest, roots [][]byte, dir string) ([]string, error) {
	if len(r.GetCert()) == 0 {
		return nil, fmt.Errorf("--out: csr request %s has no certificate (it is %s)", r.GetId(), enumName(r.GetState(), "CSR_STATE_"))
	}
	leaf, err := x509.ParseCertificate(r.GetCert())
	if err != nil {
		return nil, fmt.Errorf("csr request %s: the certificate does not parse: %w", r.GetId(), err)
	}
	pool := x509.NewCertPool()
	for _, der := range roots {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("ca status: a root does not parse: %w", err)
		}
		pool.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: leaf.NotBefore, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, fmt.Errorf("csr request %s: the certificate does not chain to the cluster's trust bundle: %w", r.GetId(), err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("--out: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.GetCert()})
	var chainPEM []byte
	for _, c := range chains[0] {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	var paths []string
	for _, f := range []struct {
		name string
		data []byte
	}{{"cert.pem", certPEM}, {"chain.pem", chainPEM}} {
		p := filepath.Join(dir, f.name)
		// Write then chmod, so a file that existed with wider permissions is narrowed too.
		if err := os.WriteFile(p, f.data, 0o600); err != nil {
			return nil, fmt.Errorf("--out: %w", err)
		}
		if err := os.Chmod(p, 0o600); err != nil {
			return nil, fmt.Errorf("--out: %w", err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

func csrCommands() []*command {
	return []*command{
		{path: "csr submit", summary: "file a certificate request for manual approval", maxArgs: 0,
			setup: func(fs *flag.FlagSet) runFunc {
				csrFile := fs.String("csr", "", "the PKCS#10 request, PEM or DER (required)")
				specFile := fs.String("spec", "", "the spec as a JSON file; else the spec flags below")
				id := fs.String("id", "", "the request's id (default: one the server chooses)")
				var spec policy.Spec
				var sans, purposes stringList
				fs.StringVar(&spec.CommonName, "common-name", "", "spec: subject CN")
				fs.Var(&sans, "san", "spec: a DNS name; repeatable (they take precedence over the CN)")
				fs.Var(&purposes, "purpose", "spec: client_auth or server_auth; repeatable (default client_auth)")
				fs.IntVar(&spec.Lifetime, "lifetime", 0, "spec: lifetime in days (default: the server's)")
				fs.StringVar(&spec.Organization, "organization", "", "spec: subject O")
				fs.StringVar(&spec.OrganizationalUnit, "organizational-unit", "", "spec: subject OU")
				fs.StringVar(&spec.Locality, "locality", "", "spec: subject L")
				fs.StringVar(&spec.State, "state", "", "spec: subject ST")
				fs.StringVar(&spec.Country, "country", "", "spec: subject C")
				fs.BoolVar(&spec.ForceIssue, "force-issue", false, "spec: allow a public key that was certified before")
				return func(ctx context.Context, inv *invocation, _ []string) error {
					if *csrFile == "" {
						return usageError("--csr is required")
					}
					csr, err := os.ReadFile(*csrFile)
					if err != nil {
						return fmt.Errorf("--csr: %w", err)
					}
					var specJSON []byte
					if *specFile != "" {
						if spec.CommonName != "" {
							return usageError("give --spec or the spec flags, not both")
						}
						if specJSON, err = os.ReadFile(*specFile); err != nil {
							return fmt.Errorf("--spec: %w", err)
						}
					} else {
						if spec.CommonName == "" {
							return usageError("--spec or --common-name is required")
						}
						spec.SANs = sans
						for _, p := range purposes {
							spec.Purposes = append(spec.Purposes, policy.Purpose(p))
						}
						if specJSON, err = json.Marshal(spec); err != nil {
							return err
						}
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.SubmitCSR(ctx, &meshcav1.SubmitCSRRequest{Csr: csr, Spec: specJSON, Id: *id})
					if err != nil {
						return err
					}
					if d := droppedSANs(specJSON); d != "" {
						fmt.Fprintf(inv.app.stderr, "meshctl: csr submit: %s\n", d)
					}
					return inv.print(r, func(t *table) { csrRows(t, r) })
				}
			}},
		{path: "csr list", summary: "list certificate requests", maxArgs: 0,
			setup: func(fs *flag.FlagSet) runFunc {
				state := fs.String("state", "all", "pending, approved, denied, issued or all")
				return func(ctx context.Context, inv *invocation, _ []string) error {
					st, ok := csrStates[strings.ToLower(*state)]
					if !ok {
						return usageError("--state %q is not pending, approved, denied, issued or all", *state)
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.ListCSRs(ctx, &meshcav1.ListCSRsRequest{State: st})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { csrRows(t, r.GetRequests()...) })
				}
			}},
		{path: "csr get", args: "ID", summary: "show a certificate request", minArgs: 1, maxArgs: 1,
			setup: func(fs *flag.FlagSet) runFunc {
				out := fs.String("out", "", "write the issued certificate to this folder as cert.pem and chain.pem (mode 0600)")
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.GetCSR(ctx, &meshcav1.GetCSRRequest{Id: args[0]})
					if err != nil {
						return err
					}
					if *out != "" {
						st, err := c.GetCAStatus(ctx, &meshcav1.GetCAStatusRequest{})
						if err != nil {
							return err
						}
						var roots [][]byte
						for _, root := range st.GetRoots() {
							roots = append(roots, root.GetDer())
						}
						if _, err := writeCertDir(r, roots, *out); err != nil {
							return err
						}
					}
					return inv.print(r, func(t *table) { csrRows(t, r) })
				}
			}},
		{path: "csr approve", args: "ID", summary: "approve a pending request: the certificate is issued and recorded", minArgs: 1, maxArgs: 1,
			setup: func(fs *flag.FlagSet) runFunc {
				out := fs.String("out", "", "write the issued certificate (PEM) to this file")
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.ApproveCSR(ctx, &meshcav1.ApproveCSRRequest{Id: args[0]})
					if err != nil {
						return err
					}
					if *out != "" {
						if err := writeCert(r, *out); err != nil {
							return err
						}
					}
					return inv.print(r, func(t *table) { csrRows(t, r) })
				}
			}},
		{path: "csr revoke", args: "ID", summary: "revoke the certificate an issued request received: it joins the CRL", minArgs: 1, maxArgs: 1,
			setup: func(fs *flag.FlagSet) runFunc {
				reason := fs.String("reason", "unspecified", "CRL reason: one of "+reasonNames())
				detail := fs.String("detail", "", "why, for the audit log")
				return func(ctx context.Context, inv *invocation, args []string) error {
					why, ok := revocationReasons[*reason]
					if !ok {
						return usageError("--reason %q is not one of %s", *reason, reasonNames())
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.RevokeCSR(ctx, &meshcav1.RevokeCSRRequest{Id: args[0], Reason: why, Detail: *detail})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { csrRows(t, r) })
				}
			}},
		{path: "csr deny", args: "ID", summary: "deny a pending request", minArgs: 1, maxArgs: 1,
			setup: func(fs *flag.FlagSet) runFunc {
				reason := fs.String("reason", "", "why (required)")
				return func(ctx context.Context, inv *invocation, args []string) error {
					if *reason == "" {
						return usageError("--reason is required")
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.DenyCSR(ctx, &meshcav1.DenyCSRRequest{Id: args[0], Reason: *reason})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { csrRows(t, r) })
				}
			}},
	}
}
