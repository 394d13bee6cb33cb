package controlplane

import (
	"context"
	"fmt"
	"time"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// pruneBatch bounds the records of each kind one Prune command removes, so no single Raft
// entry's apply grows with the state.
const pruneBatch = 5000

// pruneLoop keeps the replicated state from growing without bound: every interval, while this
// node leads, it proposes Prune with a cutoff of now minus grace. Apply reads no clock, so the
// leader carries the cutoff in the command; every replica removes the same records.
func (s *Server) pruneLoop(ctx context.Context, interval, grace time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.node.IsLeader() {
			continue
		}
		res, err := s.pruneOnce(ctx, s.Now().Add(-grace))
		if err != nil {
			s.log.Warn("prune failed; the next interval retries", "error", err)
			continue
		}
		if n := res.GetCerts() + res.GetKeyUses() + res.GetRevocations() + res.GetTokens() + res.GetNonces() + res.GetEvents(); n > 0 {
			s.log.Info("pruned expired records", "certs", res.GetCerts(), "key_uses", res.GetKeyUses(),
				"revocations", res.GetRevocations(), "tokens", res.GetTokens(), "nonces", res.GetNonces(), "events", res.GetEvents())
		}
	}
}

// pruneOnce proposes Prune commands with one cutoff until nothing older is left (bounded), and
// returns the summed counts.
func (s *Server) pruneOnce(ctx context.Context, cutoff time.Time) (*meshcav1.PruneResult, error) {
	total := &meshcav1.PruneResult{}
	for range 100 {
		res, err := s.Apply(ctx, &meshcav1.Command{Command: &meshcav1.Command_Prune{Prune: &meshcav1.PruneCommand{
			Cutoff: cutoff.UnixNano(), Limit: pruneBatch,
		}}})
		if err != nil {
			return total, fmt.Errorf("prune before %s: %w", cutoff.Format(time.RFC3339), err)
		}
		p := res.GetPrune()
		total.Certs += p.GetCerts()
		total.KeyUses += p.GetKeyUses()
		total.Revocations += p.GetRevocations()
		total.Tokens += p.GetTokens()
		total.Nonces += p.GetNonces()
		total.Events += p.GetEvents()
		if !p.GetMore() {
			return total, nil
		}
	}
	total.More = true
	return total, nil
}
