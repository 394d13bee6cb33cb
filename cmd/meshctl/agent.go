package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/agent"
)

// envAgentSocket names the agent's admin socket when --socket is not given.
const envAgentSocket = "MESHCA_AGENT_ADMIN_SOCKET"

// defaultAgentSocket is where an agent's admin socket is when neither --socket nor the
// environment says.
const defaultAgentSocket = "/run/meshca/admin.sock"

// agentTimeout bounds a call to the agent's admin socket.
const agentTimeout = 10 * time.Second

// agentCommands are the commands that talk to a meshca-agent on this host (over its admin Unix
// socket), not to the cluster.
func agentCommands() []*command {
	return []*command{
		{path: "agent secrets", summary: "show what a meshca-agent serves: SDS names, SPIFFE IDs, serials, expiry and bundle roots",
			maxArgs: 0, noClient: true,
			setup: func(fs *flag.FlagSet) runFunc {
				socket := fs.String("socket", "", "the agent's admin socket (env "+envAgentSocket+"; default "+defaultAgentSocket+")")
				output := fs.String("output", "", "output format: table or json (env "+envOutput+"; default table)")
				fs.StringVar(output, "o", "", "shorthand for --output")
				return func(ctx context.Context, inv *invocation, _ []string) error {
					path := firstNonEmpty(*socket, inv.app.getenv(envAgentSocket), defaultAgentSocket)
					format := firstNonEmpty(*output, inv.app.getenv(envOutput), outputTable)
					if format != outputTable && format != outputJSON {
						return usageError("--output: %q is not table or json", format)
					}
					inventory, raw, err := fetchAgentSecrets(ctx, path)
					if err != nil {
						return err
					}
					if format == outputJSON {
						_, err := inv.app.stdout.Write(raw)
						return err
					}
					return writeSecretsTable(inv.app.stdout, inventory)
				}
			}},
	}
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// fetchAgentSecrets asks the agent's admin socket what it serves.
func fetchAgentSecrets(ctx context.Context, socket string) (*sds.Inventory, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	transport := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	defer transport.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://meshca-agent"+agent.SecretsPath, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := (&http.Client{Transport: transport}).Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("agent admin socket %s: %w", socket, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("agent admin socket %s: %w", socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("agent admin socket %s: HTTP %d: %s", socket, resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	var inv sds.Inventory
	if err := json.Unmarshal(raw, &inv); err != nil {
		return nil, nil, fmt.Errorf("agent admin socket %s: the answer is not an inventory: %w", socket, err)
	}
	return &inv, raw, nil
}

// writeSecretsTable shows the certificates (one row per identity) and the trust bundles (one
// row per root), like istioctl proxy-config secret.
func writeSecretsTable(w io.Writer, inv *sds.Inventory) error {
	t := &table{}
	t.row("RESOURCE NAMES", "SPIFFE ID", "SERIAL", "NOT BEFORE", "NOT AFTER")
	if len(inv.Identities) == 0 {
		t.row("-", "(no certificate served yet)", "-", "-", "-")
	}
	for _, id := range inv.Identities {
		t.row(list(id.Names), id.SPIFFEID, id.Serial, rfc3339(id.NotBefore), rfc3339(id.NotAfter))
	}
	t.row("")
	t.row("RESOURCE NAMES", "TRUST DOMAIN", "ROOT SERIAL", "ROOT SUBJECT", "NOT AFTER")
	for _, b := range inv.Bundles {
		td := b.TrustDomain
		if !b.Own {
			td += " (federated)"
		}
		for _, r := range b.Roots {
			t.row(list(b.Names), td, r.Serial, r.Subject, rfc3339(r.NotAfter))
		}
	}
	return t.write(w)
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
