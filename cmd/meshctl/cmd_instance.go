package main

import (
	"context"
	"flag"
	"sort"
	"strings"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func instanceRows(t *table, is ...*meshcav1.Instance) {
	t.row("PROVIDER", "IDENTITY", "INSTANCE", "SERIAL", "ISSUED", "CLIENT", "REVOKED")
	for _, i := range is {
		revoked := "no"
		if i.GetRevoked() {
			revoked = "yes: " + i.GetRevokeReason()
		}
		t.row(i.GetProvider(), i.GetDomain()+"."+i.GetService(), i.GetInstanceId(), orDash(i.GetCurrentSerial()),
			nanos(i.GetCurrentIssued()), orDash(i.GetCurrentClientAddr()), revoked)
	}
}

// revocationReasons maps the --reason names to CRL reasons.
var revocationReasons = func() map[string]meshcav1.RevocationReason {
	m := map[string]meshcav1.RevocationReason{}
	for v := range meshcav1.RevocationReason_name {
		m[enumName(meshcav1.RevocationReason(v), "REVOCATION_REASON_")] = meshcav1.RevocationReason(v)
	}
	return m
}()

func reasonNames() string {
	var names []string
	for n := range revocationReasons {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func instanceCommands() []*command {
	return []*command{
		{path: "instance list", summary: "list instances, all pages unless --limit", maxArgs: 0,
			setup: func(fs *flag.FlagSet) runFunc {
				provider := fs.String("provider", "", "only this provider's instances")
				domain := fs.String("domain", "", "only this domain's instances")
				service := fs.String("service", "", "only this service's instances (needs --domain)")
				revoked := fs.Bool("revoked", false, "only revoked instances")
				active := fs.Bool("active", false, "only instances that are not revoked")
				limit := fs.Int("limit", 0, "at most this many instances (0: all)")
				return func(ctx context.Context, inv *invocation, _ []string) error {
					if *revoked && *active {
						return usageError("--revoked and --active exclude each other")
					}
					req := &meshcav1.ListInstancesRequest{Provider: *provider, Domain: *domain, Service: *service, PageSize: 500}
					switch {
					case *revoked:
						req.Revoked = meshcav1.RevokedFilter_REVOKED_FILTER_REVOKED
					case *active:
						req.Revoked = meshcav1.RevokedFilter_REVOKED_FILTER_ACTIVE
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					all := &meshcav1.ListInstancesResponse{}
					for {
						page, err := c.ListInstances(ctx, req)
						if err != nil {
							return err
						}
						all.Instances = append(all.Instances, page.GetInstances()...)
						if *limit > 0 && len(all.Instances) >= *limit {
							all.Instances = all.Instances[:*limit]
							break
						}
						if page.GetNextPageToken() == "" {
							break
						}
						req.PageToken = page.GetNextPageToken()
					}
					return inv.print(all, func(t *table) { instanceRows(t, all.GetInstances()...) })
				}
			}},
		{path: "instance get", args: "PROVIDER INSTANCE_ID", summary: "show an instance", minArgs: 2, maxArgs: 2,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					i, err := c.GetInstance(ctx, &meshcav1.GetInstanceRequest{Provider: args[0], InstanceId: args[1]})
					if err != nil {
						return err
					}
					return inv.print(i, func(t *table) {
						t.row("instance", i.GetProvider()+"/"+i.GetDomain()+"."+i.GetService()+"/"+i.GetInstanceId())
						t.row("hostname", orDash(i.GetHostname()))
						t.row("current serial", orDash(i.GetCurrentSerial()), nanos(i.GetCurrentIssued()), orDash(i.GetCurrentClientAddr()))
						t.row("previous serial", orDash(i.GetPreviousSerial()), nanos(i.GetPreviousIssued()), orDash(i.GetPreviousClientAddr()))
						t.row("extend pending", yesNo(i.GetExtendPending()))
						t.row("revoked", yesNo(i.GetRevoked()), orDash(i.GetRevokeReason()), nanos(i.GetRevokedTime()))
						t.row("created", nanos(i.GetCreated()))
					})
				}
			}},
		{path: "instance revoke", args: "PROVIDER INSTANCE_ID", summary: "revoke an instance: it can never refresh or register again", minArgs: 2, maxArgs: 2,
			setup: func(fs *flag.FlagSet) runFunc {
				reason := fs.String("reason", "unspecified", "CRL reason: one of "+reasonNames())
				detail := fs.String("detail", "", "why, for the audit log")
				return func(ctx context.Context, inv *invocation, args []string) error {
					r, ok := revocationReasons[*reason]
					if !ok {
						return usageError("--reason %q is not one of %s", *reason, reasonNames())
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					i, err := c.RevokeInstance(ctx, &meshcav1.RevokeInstanceRequest{Provider: args[0], InstanceId: args[1], Reason: r, Detail: *detail})
					if err != nil {
						return err
					}
					return inv.print(i, func(t *table) { instanceRows(t, i) })
				}
			}},
	}
}

func tokenCommands() []*command {
	return []*command{
		{path: "token issue", args: "DOMAIN.SERVICE INSTANCE_ID", summary: "issue a one-time register token for an instance (prints the token)", minArgs: 2, maxArgs: 2,
			setup: func(fs *flag.FlagSet) runFunc {
				ttl := fs.Duration("ttl", time.Hour, "how long the token is valid (at most 168h)")
				return func(ctx context.Context, inv *invocation, args []string) error {
					domain, service, err := splitIdentity(args[0])
					if err != nil {
						return err
					}
					if *ttl <= 0 || *ttl%time.Second != 0 {
						return usageError("--ttl %s must be a positive whole number of seconds", *ttl)
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.IssueRegisterToken(ctx, &meshcav1.IssueRegisterTokenRequest{
						Domain: domain, Service: service, InstanceId: args[1], TtlSeconds: int64(*ttl / time.Second),
					})
					if err != nil {
						return err
					}
					// The table form is the token alone, so TOKEN=$(meshctl token issue ...) works.
					return inv.print(r, func(t *table) { t.row(r.GetToken()) })
				}
			}},
	}
}
