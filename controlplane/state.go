package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore"
)

// watchState keeps the node in step with the replicated state: the Authority follows the CA
// record, the node certificate follows the active issuer, and the bundles served over SDS
// follow the CA and Federation records. It wakes only when the CA record or a federation
// changed (not for every issuance), and rebuilds only the parts that changed.
func (s *Server) watchState(ctx context.Context) {
	for {
		changed := s.fsm.TrustChanged()
		st := s.fsm.State()
		s.syncCA(st)
		s.syncBundles(st)
		s.syncIssuerNotice(st)
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// syncCA rebuilds the Authority when the CA record's issuing parts changed, and re-signs the
// node certificate when the active issuer did.
func (s *Server) syncCA(st *raftstore.State) {
	rec, err := st.CA()
	if err != nil {
		return
	}
	old := s.view.Load()
	key := viewKey(rec)
	if old != nil && old.key == key {
		if old.updated != rec.GetUpdated() {
			next := *old
			next.updated = rec.GetUpdated()
			s.view.Store(&next)
		}
		return
	}
	v, err := buildView(rec, s.td, s.policy, s.signers.open, s.now())
	if err != nil {
		if s.viewFailed != key {
			s.log.Error("the replicated CA record cannot be used on this node; issuance stays unavailable here", "error", err)
			s.viewFailed = key
		}
		return
	}
	s.view.Store(v)
	s.log.Info("CA loaded from the replicated record", "issuer", v.issuer.GetId(), "roots", len(rec.GetRoots()))
	if due, _ := s.svid.due(v.issuer.GetId(), s.now()); due {
		if err := s.svid.issue(v.authority.Issuer(), v.issuer.GetId(), s.now()); err != nil {
			s.log.Error("node certificate", "error", err)
		}
	}
}

// syncBundles keeps the SDS bundle store equal to the own bundle and the federated bundles.
func (s *Server) syncBundles(st *raftstore.State) {
	want := map[string]*spiffebundle.Bundle{}
	own := s.Bundle()
	want[s.td.Name()] = spiffebundle.FromX509Bundle(own)
	for _, f := range st.Federations() {
		td, err := spiffeid.TrustDomainFromString(f.GetTrustDomain())
		if err != nil || td == s.td {
			continue
		}
		b, err := spiffebundle.Parse(td, f.GetBundle())
		if err != nil {
			s.log.Warn("federated bundle does not parse; not served", "trust_domain", td.Name(), "error", err)
			continue
		}
		if len(b.X509Authorities()) == 0 {
			continue
		}
		want[td.Name()] = b
	}
	for name, b := range want {
		h := sha256.New()
		for _, c := range b.X509Authorities() {
			h.Write(c.Raw)
		}
		digest := hex.EncodeToString(h.Sum(nil))
		if s.bundleSeen[name] == digest {
			continue
		}
		if err := s.bundles.SetBundle(b.X509Bundle()); err != nil {
			s.log.Warn("bundle not served", "trust_domain", name, "error", err)
			continue
		}
		s.bundleSeen[name] = digest
	}
	for name := range s.bundleSeen {
		if _, ok := want[name]; !ok {
			s.bundles.RemoveBundle(spiffeid.RequireTrustDomainFromString(name))
			delete(s.bundleSeen, name)
		}
	}
}

// bundleSequence is the sequence number of the bundles as this node sees them: the latest
// change of the CA record or of a federated bundle (proposer time). It moves with every
// change of any bundle (and, harmlessly, with some changes that leave them as they were).
func bundleSequence(st *raftstore.State) uint64 {
	var seq int64
	if rec, err := st.CA(); err == nil {
		seq = rec.GetUpdated()
	}
	for _, f := range st.Federations() {
		seq = max(seq, f.GetLastRefresh())
	}
	return uint64(max(seq, 0))
}

// renewNodeCert renews the node certificate at half its life with whatever issuer signs now.
func (s *Server) renewNodeCert(ctx context.Context) {
	for {
		iss, id := s.local.issuer, s.local.record.GetId()
		if v := s.view.Load(); v != nil {
			iss, id = v.authority.Issuer(), v.issuer.GetId()
		}
		now := s.now()
		due, at := s.svid.due(id, now)
		wait := at.Sub(now)
		if due {
			if err := s.svid.issue(iss, id, now); err != nil {
				s.log.Error("node certificate renewal failed; retrying", "error", err)
				wait = 30 * time.Second
			} else {
				s.log.Info("node certificate renewed", "issuer", id)
				continue
			}
		}
		t := time.NewTimer(max(wait, time.Second))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// leaderDuties runs, each time this node becomes the leader, the cluster's bootstrap: the
// seeded providers and the CA record, if the cluster has no CA record yet.
func (s *Server) leaderDuties(ctx context.Context) {
	for info := range s.node.WatchLeader(ctx) {
		if !info.Self {
			continue
		}
		backoff := 200 * time.Millisecond
		for s.node.IsLeader() {
			err := s.bootstrapState(ctx)
			if err == nil {
				break
			}
			s.log.Warn("cluster bootstrap as leader failed; retrying", "error", err)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			backoff = min(backoff*2, 5*time.Second)
		}
	}
}

// bootstrapState seeds the config's providers and services (created if missing, never
// overwritten) and then proposes this node's CA as the cluster's, once: when the CA record
// exists, bootstrap is over and nothing is seeded again, so records an operator deleted stay
// deleted.
func (s *Server) bootstrapState(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.node.Barrier(ctx); err != nil {
		return err
	}
	if _, err := s.fsm.State().CA(); err == nil {
		return nil
	}
	for _, p := range s.cfg.Providers {
		_, err := s.Apply(ctx, &meshcav1.Command{Command: &meshcav1.Command_PutProvider{PutProvider: &meshcav1.PutProviderCommand{
			Mode: meshcav1.PutMode_PUT_MODE_CREATE,
			Provider: &meshcav1.Provider{
				Name: p.Name, DnsSuffix: p.DNSSuffix, ConfirmEndpoint: p.ConfirmEndpoint,
				Enabled: true, RefreshNeedsConfirmation: p.ConfirmRefresh,
			},
		}}})
		if err != nil && !errors.Is(err, raftstore.ErrAlreadyExists) {
			return err
		}
	}
	for _, sv := range s.cfg.Services {
		domain, service, _ := raftstore.SplitIdentity(sv.Name)
		if _, err := s.fsm.State().Domain(domain); err != nil {
			_, err := s.Apply(ctx, &meshcav1.Command{Command: &meshcav1.Command_PutDomain{PutDomain: &meshcav1.PutDomainCommand{
				Mode: meshcav1.PutMode_PUT_MODE_CREATE, Domain: &meshcav1.Domain{Name: domain},
			}}})
			if err != nil && !errors.Is(err, raftstore.ErrAlreadyExists) {
				return err
			}
		}
		_, err := s.Apply(ctx, &meshcav1.Command{Command: &meshcav1.Command_PutService{PutService: &meshcav1.PutServiceCommand{
			Mode: meshcav1.PutMode_PUT_MODE_CREATE, Service: &meshcav1.Service{Domain: domain, Name: service, LaunchGrants: sv.LaunchGrants},
		}}})
		if err != nil && !errors.Is(err, raftstore.ErrAlreadyExists) {
			return err
		}
	}
	var roots [][]byte
	for _, r := range s.local.issuer.Roots() {
		roots = append(roots, r.Raw)
	}
	_, err := s.Apply(ctx, &meshcav1.Command{Command: &meshcav1.Command_SetCa{SetCa: &meshcav1.SetCACommand{
		Roots: roots, ActiveIssuer: s.local.record,
	}}})
	if err != nil && !errors.Is(err, raftstore.ErrAlreadyExists) {
		return err
	}
	s.log.Info("cluster CA record set", "issuer", s.local.record.GetId(), "providers_seeded", len(s.cfg.Providers), "services_seeded", len(s.cfg.Services))
	return nil
}
