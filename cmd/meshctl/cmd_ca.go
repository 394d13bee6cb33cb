package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"os"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func issuerRow(t *table, role string, is *meshcav1.CAIssuer) {
	signer := is.GetSigner()
	if is.GetPkcs11Label() != "" {
		signer += " " + is.GetPkcs11Label()
	}
	t.row(role, short(is.GetId()), is.GetSubject(), is.GetKeyType()+" ("+signer+")", seconds(is.GetNotAfter()), seconds(is.GetLastNotAfter()))
}

func caCommands() []*command {
	return []*command{
		{path: "ca status", summary: "show the trust bundle, the active issuer and where a rotation stands", maxArgs: 0,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, _ []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					s, err := c.GetCAStatus(ctx, &meshcav1.GetCAStatusRequest{})
					if err != nil {
						return err
					}
					return inv.print(s, func(t *table) {
						t.row("trust domain", s.GetTrustDomain())
						t.row("rotation", enumName(s.GetRotationState(), "CA_ROTATION_STATE_"))
						t.row("crl number", fmt.Sprint(s.GetCrlNumber()))
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
					})
				}
			}},
		{path: "crl get", summary: "fetch the certificate revocation list", maxArgs: 0,
			setup: func(fs *flag.FlagSet) runFunc {
				out := fs.String("out", "", "write the CRL to this file (required; - for standard output)")
				asPEM := fs.Bool("pem", false, "write PEM instead of DER")
				return func(ctx context.Context, inv *invocation, _ []string) error {
					if *out == "" {
						return usageError("--out is required")
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.GetCRL(ctx, &meshcav1.GetCRLRequest{})
					if err != nil {
						return err
					}
					data := r.GetDer()
					if *asPEM {
						data = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: data})
					}
					if *out == "-" {
						_, err := inv.app.stdout.Write(data)
						return err
					}
					if err := os.WriteFile(*out, data, 0o644); err != nil {
						return fmt.Errorf("--out: %w", err)
					}
					crl, err := x509.ParseRevocationList(r.GetDer())
					if err != nil {
						return fmt.Errorf("the server's CRL does not parse: %w", err)
					}
					return inv.print(r, func(t *table) {
						t.row(fmt.Sprintf("wrote %s: CRL number %s, %d entries, next update %s",
							*out, crl.Number, len(crl.RevokedCertificateEntries), crl.NextUpdate.UTC().Format("2006-01-02T15:04:05Z")))
					})
				}
			}},
	}
}
