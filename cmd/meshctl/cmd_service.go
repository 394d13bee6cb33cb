package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"strings"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func serviceRows(t *table, ss ...*meshcav1.Service) {
	t.row("IDENTITY", "KEY VERSIONS", "LAUNCH GRANTS", "CREATED", "UPDATED")
	for _, s := range ss {
		var versions []string
		for _, k := range s.GetKeys() {
			versions = append(versions, k.GetVersion())
		}
		t.row(s.GetDomain()+"."+s.GetName(), list(versions), list(s.GetLaunchGrants()), nanos(s.GetCreated()), nanos(s.GetUpdated()))
	}
}

// splitIdentity splits <domain>.<service> at its last dot; the server checks the names.
func splitIdentity(id string) (domain, service string, err error) {
	i := strings.LastIndexByte(id, '.')
	if i <= 0 || i == len(id)-1 {
		return "", "", usageError("%q is not a service identity <domain>.<service>", id)
	}
	return id[:i], id[i+1:], nil
}

// readPublicKey reads a public key file: PEM "PUBLIC KEY", PEM "CERTIFICATE" (its key), or a
// DER SubjectPublicKeyInfo. It returns the DER SubjectPublicKeyInfo.
func readPublicKey(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if b, _ := pem.Decode(raw); b != nil {
		switch b.Type {
		case "PUBLIC KEY":
			raw = b.Bytes
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			return c.RawSubjectPublicKeyInfo, nil
		default:
			return nil, fmt.Errorf("%s: PEM block %q is not a PUBLIC KEY or CERTIFICATE", path, b.Type)
		}
	}
	if _, err := x509.ParsePKIXPublicKey(raw); err != nil {
		return nil, fmt.Errorf("%s: not a public key: %w", path, err)
	}
	return raw, nil
}

func serviceCommands() []*command {
	return []*command{
		{path: "service add", args: "DOMAIN.SERVICE", summary: "create a service of an existing domain", minArgs: 1, maxArgs: 1,
			setup: func(fs *flag.FlagSet) runFunc {
				var grants, keys stringList
				fs.Var(&grants, "grant", "a provider pattern allowed to launch it (sys.auth.k8s, sys.auth.aws.*); repeatable")
				fs.Var(&keys, "public-key", "VERSION=FILE: a public key (PEM or DER) registered under a key version; repeatable")
				return func(ctx context.Context, inv *invocation, args []string) error {
					domain, name, err := splitIdentity(args[0])
					if err != nil {
						return err
					}
					svc := &meshcav1.Service{Domain: domain, Name: name, LaunchGrants: grants}
					for _, kv := range keys {
						version, file, ok := strings.Cut(kv, "=")
						if !ok || version == "" || file == "" {
							return usageError("--public-key: %q is not VERSION=FILE", kv)
						}
						der, err := readPublicKey(file)
						if err != nil {
							return fmt.Errorf("--public-key %s: %w", version, err)
						}
						svc.Keys = append(svc.Keys, &meshcav1.ServiceKey{Version: version, PublicKey: der})
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					s, err := c.PutService(ctx, &meshcav1.PutServiceRequest{Service: svc, Mode: meshcav1.PutMode_PUT_MODE_CREATE})
					if err != nil {
						return err
					}
					return inv.print(s, func(t *table) { serviceRows(t, s) })
				}
			}},
		{path: "service get", args: "DOMAIN.SERVICE", summary: "show a service", minArgs: 1, maxArgs: 1,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					s, err := c.GetService(ctx, &meshcav1.GetServiceRequest{Identity: args[0]})
					if err != nil {
						return err
					}
					return inv.print(s, func(t *table) { serviceRows(t, s) })
				}
			}},
		{path: "service list", summary: "list the services you may read", maxArgs: 0,
			setup: func(fs *flag.FlagSet) runFunc {
				domain := fs.String("domain", "", "only the services of this domain")
				return func(ctx context.Context, inv *invocation, _ []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.ListServices(ctx, &meshcav1.ListServicesRequest{Domain: *domain})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { serviceRows(t, r.GetServices()...) })
				}
			}},
		{path: "service delete", args: "DOMAIN.SERVICE", summary: "delete a service (its instances can no longer refresh)", minArgs: 1, maxArgs: 1,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.DeleteService(ctx, &meshcav1.DeleteServiceRequest{Identity: args[0]})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { t.row(fmt.Sprintf("service %s deleted", args[0])) })
				}
			}},
		{path: "service key add", args: "DOMAIN.SERVICE VERSION FILE", summary: "register a public key (PEM or DER) under a key version", minArgs: 3, maxArgs: 3,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					der, err := readPublicKey(args[2])
					if err != nil {
						return err
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					s, err := c.AddServiceKey(ctx, &meshcav1.AddServiceKeyRequest{Identity: args[0], Key: &meshcav1.ServiceKey{Version: args[1], PublicKey: der}})
					if err != nil {
						return err
					}
					return inv.print(s, func(t *table) { serviceRows(t, s) })
				}
			}},
		{path: "service key remove", args: "DOMAIN.SERVICE VERSION", summary: "remove a key version", minArgs: 2, maxArgs: 2,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					s, err := c.RemoveServiceKey(ctx, &meshcav1.RemoveServiceKeyRequest{Identity: args[0], Version: args[1]})
					if err != nil {
						return err
					}
					return inv.print(s, func(t *table) { serviceRows(t, s) })
				}
			}},
		grantCommand("service grant add", "let providers matching a pattern launch the service", true),
		grantCommand("service grant remove", "withdraw a launch grant", false),
	}
}

func grantCommand(path, summary string, add bool) *command {
	return &command{path: path, args: "DOMAIN.SERVICE PATTERN", summary: summary, minArgs: 2, maxArgs: 2,
		setup: func(*flag.FlagSet) runFunc {
			return func(ctx context.Context, inv *invocation, args []string) error {
				c, err := inv.admin()
				if err != nil {
					return err
				}
				call := c.RemoveLaunchGrant
				if add {
					call = c.AddLaunchGrant
				}
				s, err := call(ctx, &meshcav1.LaunchGrantRequest{Identity: args[0], Pattern: args[1]})
				if err != nil {
					return err
				}
				return inv.print(s, func(t *table) { serviceRows(t, s) })
			}
		}}
}
