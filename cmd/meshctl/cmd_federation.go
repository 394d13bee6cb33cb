package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
)

// federation returns the Federation API client on the admin connection, dialing it on first
// use.
func (inv *invocation) federation() (meshcav1.FederationAdminClient, error) {
	if _, err := inv.admin(); err != nil {
		return nil, err
	}
	return meshcav1.NewFederationAdminClient(inv.dialed.conn), nil
}

// federationRow is one federation in a table.
func federationRow(t *table, f *meshcav1.FederationInfo) {
	auth := "web PKI"
	switch {
	case f.GetEndpointSpiffeId() != "":
		auth = f.GetEndpointSpiffeId()
	case len(f.GetEndpointCa()) > 0:
		auth = "web PKI (endpoint CA)"
	}
	roots := make([]string, 0, len(f.GetRootSha256()))
	for _, r := range f.GetRootSha256() {
		roots = append(roots, short(r))
	}
	t.row(f.GetTrustDomain(), f.GetEndpoint(), auth, fmt.Sprint(f.GetSequence()), seconds(f.GetLastRefresh()), strings.Join(roots, ","))
}

// federationHeader is the header of federationRow's table.
func federationHeader(t *table) {
	t.row("TRUST DOMAIN", "ENDPOINT", "AUTHENTICATED BY", "SEQUENCE", "LAST REFRESH", "ROOTS (SHA-256)")
}

// federationCommands manage SPIFFE federation with foreign trust domains.
func federationCommands() []*command {
	one := func(get func(ctx context.Context, c meshcav1.FederationAdminClient, td string) (*meshcav1.FederationInfo, error)) func(*flag.FlagSet) runFunc {
		return func(*flag.FlagSet) runFunc {
			return func(ctx context.Context, inv *invocation, args []string) error {
				c, err := inv.federation()
				if err != nil {
					return err
				}
				f, err := get(ctx, c, args[0])
				if err != nil {
					return err
				}
				return inv.print(f, func(t *table) { federationHeader(t); federationRow(t, f) })
			}
		}
	}
	return []*command{
		{path: "federation add", args: "TRUST-DOMAIN", summary: "trust a foreign trust domain: fetch its bundle from its SPIFFE bundle endpoint and keep it fresh", minArgs: 1, maxArgs: 1,
			setup: func(fs *flag.FlagSet) runFunc {
				endpoint := fs.String("endpoint", "", "the peer's SPIFFE bundle endpoint URL, https:// (required)")
				endpointID := fs.String("endpoint-spiffe-id", "", "SPIFFE authentication: the SPIFFE ID the endpoint's certificate must carry (needs --bundle); web PKI when empty")
				bundleFile := fs.String("bundle", "", "the peer's bundle to start from: a SPIFFE bundle (JWKS) or PEM roots")
				endpointCA := fs.String("endpoint-ca", "", "web PKI: PEM CA certificates that alone authenticate the endpoint (an endpoint under a private CA) instead of the server's system roots")
				return func(ctx context.Context, inv *invocation, args []string) error {
					if *endpoint == "" {
						return usageError("--endpoint is required")
					}
					if *endpointID != "" && *bundleFile == "" {
						return usageError("--endpoint-spiffe-id needs --bundle: the endpoint's certificate is verified against the peer's bundle")
					}
					if *endpointID != "" && *endpointCA != "" {
						return usageError("--endpoint-ca is for web PKI and cannot go with --endpoint-spiffe-id, which verifies the endpoint against the peer's bundle")
					}
					req := &meshcav1.AddFederationRequest{TrustDomain: args[0], Endpoint: *endpoint, EndpointSpiffeId: *endpointID}
					if *endpointCA != "" {
						b, err := os.ReadFile(*endpointCA)
						if err != nil {
							return fmt.Errorf("--endpoint-ca: %w", err)
						}
						if _, err := ca.ParseCertificatesPEM(b); err != nil {
							return usageError("--endpoint-ca %s: want PEM certificates: %v", *endpointCA, err)
						}
						req.EndpointCa = b
					}
					if *bundleFile != "" {
						b, err := os.ReadFile(*bundleFile)
						if err != nil {
							return fmt.Errorf("--bundle: %w", err)
						}
						req.BootstrapBundle = b
					}
					c, err := inv.federation()
					if err != nil {
						return err
					}
					f, err := c.AddFederation(ctx, req)
					if err != nil {
						return err
					}
					return inv.print(f, func(t *table) { federationHeader(t); federationRow(t, f) })
				}
			}},
		{path: "federation list", summary: "list the federated trust domains", maxArgs: 0,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, _ []string) error {
					c, err := inv.federation()
					if err != nil {
						return err
					}
					r, err := c.ListFederations(ctx, &meshcav1.ListFederationsRequest{})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) {
						federationHeader(t)
						for _, f := range r.GetFederations() {
							federationRow(t, f)
						}
					})
				}
			}},
		{path: "federation refresh", args: "TRUST-DOMAIN", summary: "fetch a federated bundle now instead of at its refresh hint", minArgs: 1, maxArgs: 1,
			setup: one(func(ctx context.Context, c meshcav1.FederationAdminClient, td string) (*meshcav1.FederationInfo, error) {
				return c.RefreshFederation(ctx, &meshcav1.RefreshFederationRequest{TrustDomain: td})
			})},
		{path: "federation remove", args: "TRUST-DOMAIN", summary: "stop trusting a foreign trust domain", minArgs: 1, maxArgs: 1,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.federation()
					if err != nil {
						return err
					}
					r, err := c.RemoveFederation(ctx, &meshcav1.RemoveFederationRequest{TrustDomain: args[0]})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { t.row("removed federation with " + args[0]) })
				}
			}},
	}
}
