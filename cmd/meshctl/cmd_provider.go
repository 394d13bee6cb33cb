package main

import (
	"context"
	"flag"
	"fmt"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func providerRows(t *table, ps ...*meshcav1.Provider) {
	t.row("NAME", "DNS SUFFIX", "ENABLED", "CONFIRM ENDPOINT", "CONFIRM REFRESH", "UPDATED")
	for _, p := range ps {
		t.row(p.GetName(), p.GetDnsSuffix(), yesNo(p.GetEnabled()), orDash(p.GetConfirmEndpoint()), yesNo(p.GetRefreshNeedsConfirmation()), nanos(p.GetUpdated()))
	}
}

// providerFlags are the settable fields of a provider.
type providerFlags struct {
	dnsSuffix, endpoint      *string
	confirmRefresh, disabled *bool
}

func (p *providerFlags) register(fs *flag.FlagSet) {
	p.dnsSuffix = fs.String("dns-suffix", "", "DNS suffix of the provider's instances, unique across providers")
	p.endpoint = fs.String("confirm-endpoint", "", "https URL of the provider's confirm endpoint (called over mutual TLS)")
	p.confirmRefresh = fs.Bool("confirm-refresh", false, "ask the provider to confirm refreshes too")
	p.disabled = fs.Bool("disabled", false, "register the provider disabled")
}

// apply sets onto prov the fields whose flags were given on fs (all of them when all is set).
func (p *providerFlags) apply(fs *flag.FlagSet, prov *meshcav1.Provider, all bool) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if all || set["dns-suffix"] {
		prov.DnsSuffix = *p.dnsSuffix
	}
	if all || set["confirm-endpoint"] {
		prov.ConfirmEndpoint = *p.endpoint
	}
	if all || set["confirm-refresh"] {
		prov.RefreshNeedsConfirmation = *p.confirmRefresh
	}
	if all || set["disabled"] {
		prov.Enabled = !*p.disabled
	}
}

func providerCommands() []*command {
	return []*command{
		{path: "provider add", args: "NAME", summary: "register a provider (a launcher service such as sys.auth.k8s)", minArgs: 1, maxArgs: 1,
			setup: func(fs *flag.FlagSet) runFunc {
				var pf providerFlags
				pf.register(fs)
				return func(ctx context.Context, inv *invocation, args []string) error {
					if *pf.dnsSuffix == "" {
						return usageError("--dns-suffix is required")
					}
					prov := &meshcav1.Provider{Name: args[0]}
					pf.apply(fs, prov, true)
					c, err := inv.admin()
					if err != nil {
						return err
					}
					p, err := c.PutProvider(ctx, &meshcav1.PutProviderRequest{Provider: prov, Mode: meshcav1.PutMode_PUT_MODE_CREATE})
					if err != nil {
						return err
					}
					return inv.print(p, func(t *table) { providerRows(t, p) })
				}
			}},
		{path: "provider update", args: "NAME", summary: "change the given fields of a provider", minArgs: 1, maxArgs: 1,
			setup: func(fs *flag.FlagSet) runFunc {
				var pf providerFlags
				pf.register(fs)
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					prov, err := c.GetProvider(ctx, &meshcav1.GetProviderRequest{Name: args[0]})
					if err != nil {
						return err
					}
					pf.apply(fs, prov, false)
					p, err := c.PutProvider(ctx, &meshcav1.PutProviderRequest{Provider: prov, Mode: meshcav1.PutMode_PUT_MODE_UPDATE})
					if err != nil {
						return err
					}
					return inv.print(p, func(t *table) { providerRows(t, p) })
				}
			}},
		{path: "provider get", args: "NAME", summary: "show a provider", minArgs: 1, maxArgs: 1,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					p, err := c.GetProvider(ctx, &meshcav1.GetProviderRequest{Name: args[0]})
					if err != nil {
						return err
					}
					return inv.print(p, func(t *table) { providerRows(t, p) })
				}
			}},
		{path: "provider list", summary: "list the providers", maxArgs: 0,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, _ []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.ListProviders(ctx, &meshcav1.ListProvidersRequest{})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { providerRows(t, r.GetProviders()...) })
				}
			}},
		{path: "provider delete", args: "NAME", summary: "delete a provider (its instances can no longer refresh)", minArgs: 1, maxArgs: 1,
			setup: func(*flag.FlagSet) runFunc {
				return func(ctx context.Context, inv *invocation, args []string) error {
					c, err := inv.admin()
					if err != nil {
						return err
					}
					r, err := c.DeleteProvider(ctx, &meshcav1.DeleteProviderRequest{Name: args[0]})
					if err != nil {
						return err
					}
					return inv.print(r, func(t *table) { t.row(fmt.Sprintf("provider %s deleted", args[0])) })
				}
			}},
		providerEnableCommand("provider enable", "enable a provider", true),
		providerEnableCommand("provider disable", "disable a provider: it can no longer launch or refresh instances", false),
	}
}

func providerEnableCommand(path, summary string, enabled bool) *command {
	return &command{path: path, args: "NAME", summary: summary, minArgs: 1, maxArgs: 1,
		setup: func(*flag.FlagSet) runFunc {
			return func(ctx context.Context, inv *invocation, args []string) error {
				c, err := inv.admin()
				if err != nil {
					return err
				}
				p, err := c.SetProviderEnabled(ctx, &meshcav1.SetProviderEnabledRequest{Name: args[0], Enabled: enabled})
				if err != nil {
					return err
				}
				return inv.print(p, func(t *table) { providerRows(t, p) })
			}
		}}
}
