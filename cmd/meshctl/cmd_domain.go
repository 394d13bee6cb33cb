package main

import (
	"context"
	"flag"
	"fmt"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func domainRows(t *table, ds ...*meshcav1.Domain) {
	t.row("NAME", "ADMINS", "CREATED", "UPDATED")
	for _, d := range ds {
		t.row(d.GetName(), list(d.GetAdmins()), nanos(d.GetCreated()), nanos(d.GetUpdated()))
	}
}

func domainCommands() []*command {
	return []*command{
		{path: "domain add", args: "NAME", summary: "create a domain", minArgs: 1, maxArgs: 1,
			setup: func(fs *flag.FlagSet) runFunc {
				var admins stringList
				fs.Var(&admins, "admin", "a principal (SPIFFE ID or <domain>.<service>) that administers the domain; repeatable")
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					d, err := c.PutDomain(ctx, &meshcav1.PutDomainRequest{
						Domain: &meshcav1.Domain{Name: args[0], Admins: admins}, Mode: meshcav1.PutMode_PUT_MODE_CREATE,
					})
					if err != nil {
						return err
					}
					return inv.print(d, func(t *table) { domainRows(t, d) })
				}
			}},
		{path: "domain get", args: "NAME", summary: "show a domain", minArgs: 1, maxArgs: 1,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					d, err := c.GetDomain(ctx, &meshcav1.GetDomainRequest{Name: args[0]})
					if err != nil {
						return err
					}
					return inv.print(d, func(t *table) { domainRows(t, d) })
				}
			}},
		{path: "domain list", summary: "list the domains you may read", maxArgs: 0,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, _ []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.ListDomains(ctx, &meshcav1.ListDomainsRequest{})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { domainRows(t, r.GetDomains()...) })
				}
			}},
		{path: "domain delete", args: "NAME", summary: "delete a domain that has no services", minArgs: 1, maxArgs: 1,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.DeleteDomain(ctx, &meshcav1.DeleteDomainRequest{Name: args[0]})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { t.row(fmt.Sprintf("domain %s deleted", args[0])) })
				}
			}},
		domainAdminsCommand("domain admin add", "add principals to a domain's admins", true),
		domainAdminsCommand("domain admin remove", "remove principals from a domain's admins", false),
	}
}

func domainAdminsCommand(path, summary string, add bool) *command {
	return &command{path: path, args: "NAME PRINCIPAL...", summary: summary, minArgs: 2, maxArgs: -1,
		setup: func(*flag.FlagSet) runFunc {
			return func(ctx context.Context, inv *invocation, args []string) error {
				c, err := inv.admin()
				if err != nil {
					return err
				}
				req := &meshcav1.DomainAdminsRequest{Name: args[0], Admins: args[1:]}
				call := c.RemoveDomainAdmins
				if add {
					call = c.AddDomainAdmins
				}
				d, err := call(ctx, req)
				if err != nil {
					return err
				}
				return inv.print(d, func(t *table) { domainRows(t, d) })
			}
		}}
}
