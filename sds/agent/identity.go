package agent

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/ca/signer"
)

// ErrBadResponse means a CA node answered with a certificate the agent cannot use: it does not
// match the key sent, names another identity, or does not chain to the trust bundle.
var ErrBadResponse = errors.New("unusable certificate from the CA")

// identityLoop keeps one workload identity's certificate: it registers, refreshes on schedule,
// retries failures with backoff, and re-attests when the certificate expires or is refused.
type identityLoop struct {
	a        *Agent
	cfg      IdentityConfig
	id       spiffeid.ID
	names    policy.WorkloadNames
	attestor attestor
	log      *slog.Logger

	// Owned by run's goroutine once it starts.
	st  identityState
	cur *current
	r   float64 // jitter draw for cur, in [-1, 1]
	rr  float64 // reissue jitter draw for cur, in [0, 1)
	// reissue counts the replacements made for one reissue request (notice) and when the last
	// was made, so a replacement that still brought a former issuer's certificate backs off.
	reissue struct {
		notice *issuerNotice
		tries  int
		last   time.Time
	}
}

func newIdentityLoop(a *Agent, cfg IdentityConfig) (*identityLoop, error) {
	names, err := cfg.request(a.td).Names()
	if err != nil {
		return nil, fmt.Errorf("identity %s: %w", cfg.Name, err)
	}
	l := &identityLoop{
		a: a, cfg: cfg, id: names.SPIFFEID, names: names,
		attestor: newAttestor(cfg.Attestation, cfg, a.td),
		log:      a.log.With("identity", cfg.Name, "spiffe_id", names.SPIFFEID.String()),
	}
	st, err := a.state.load(cfg.Name)
	if err != nil {
		if errors.Is(err, ErrStatePermissions) {
			return nil, err
		}
		// A state file that does not decode costs a registration, not the agent.
		l.log.Error("agent: ignoring unreadable state; the instance registers again", "error", err)
		st = identityState{}
	}
	l.st = st
	if st.Cert != nil {
		cur, err := st.Cert.decode(l.id, cfg.InstanceID)
		switch {
		case errors.Is(err, errOtherIdentity):
			l.log.Info("agent: stored certificate is for another identity or instance; registering", "error", err)
		case err != nil:
			l.log.Error("agent: ignoring stored certificate; the instance registers again", "error", err)
		default:
			l.setCurrent(cur)
		}
	}
	return l, nil
}

func (l *identityLoop) setCurrent(c *current) {
	l.cur = c
	l.r = 2*mathrand.Float64() - 1
	l.rr = mathrand.Float64()
}

// reissueAt is when the held certificate is replaced because the cluster asked for every
// certificate its active issuer did not sign to be replaced now; ok is false when it did not
// ask this of the held certificate.
func (l *identityLoop) reissueAt(n *issuerNotice) (at time.Time, ok bool) {
	if l.cur == nil || !n.asks(l.cur.svid.Certificates[0]) {
		return time.Time{}, false
	}
	tries, last := 0, time.Time{}
	if l.reissue.notice == n {
		tries, last = l.reissue.tries, l.reissue.last
	}
	return l.a.sched.reissueAt(n.heard, l.rr, tries, last), true
}

// run keeps the identity's certificate until ctx ends.
func (l *identityLoop) run(ctx context.Context) error {
	clock := l.a.clock
	if l.cur != nil && clock.Now().Before(l.cur.notAfter()) {
		// A restart serves the stored certificate at once and refreshes it on schedule.
		if err := l.a.store.SetSVID(l.cur.svid); err != nil {
			l.log.Error("agent: stored certificate cannot be served; registering", "error", err)
			l.cur = nil
		} else {
			l.log.Info("agent: serving the stored certificate", "serial", l.cur.serial, "not_after", l.cur.notAfter())
		}
	}
	failures := 0
	var retryAt time.Time
	for {
		notice, noticeChanged := l.a.issuer.current()
		_, at := l.a.sched.plan(clock.Now(), l.cur.holding(), l.r, retryAt)
		// A reissue request brings the refresh forward; after a failure, the backoff rules.
		reissue := false
		if rat, ok := l.reissueAt(notice); ok && retryAt.IsZero() && rat.Before(at) {
			at, reissue = rat, true
		}
		if notice != nil {
			l.log.Debug("agent: next attempt planned", "issuer", notice.id, "reissue", reissue, "in", at.Sub(clock.Now()).Round(time.Millisecond))
		}
		passed, woke := sleepOrWake(ctx, clock, at.Sub(clock.Now()), noticeChanged)
		if woke {
			continue // plan again with the new notice
		}
		if !passed && ctx.Err() != nil {
			return nil
		}
		// Decide at the time of the attempt: the certificate may have expired meanwhile (a
		// suspended host, a long backoff).
		act := actionAt(clock.Now(), l.cur.holding())
		if reissue {
			l.log.Info("agent: replacing the certificate now: the cluster asked for every certificate its active issuer did not sign to be replaced",
				"serial", l.cur.serial, "issuer", notice.id)
			if l.reissue.notice != notice {
				l.reissue.notice, l.reissue.tries = notice, 0
			}
			l.reissue.tries++
			l.reissue.last = clock.Now()
		}
		err := l.attempt(ctx, act)
		if err == nil && reissue {
			l.a.metrics.reissues.WithLabelValues(l.cfg.Name).Inc()
		}
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			failures, retryAt = 0, time.Time{}
			continue
		}
		failures++
		wait := l.a.sched.backoff.after(failures)
		if errors.Is(err, ErrAttestationSpent) {
			wait = l.a.sched.backoff.max
		}
		retryAt = clock.Now().Add(wait)
		l.a.metrics.failures.WithLabelValues(l.cfg.Name, act.String(), failureReason(err)).Inc()
		l.log.Warn("agent: "+act.String()+" failed; retrying", "error", err, "failures", failures, "retry_in", wait)
	}
}

func failureReason(err error) string {
	switch {
	case errors.Is(err, ErrAttestationSpent):
		return "attestation_spent"
	case errors.Is(err, ErrAttestation):
		return "attestation"
	case errors.Is(err, ErrBadResponse):
		return "bad_response"
	}
	return status.Code(err).String()
}

func (l *identityLoop) attempt(ctx context.Context, act action) error {
	if act == actRegister {
		return l.register(ctx)
	}
	return l.refresh(ctx)
}

func (l *identityLoop) register(ctx context.Context) error {
	now := l.a.clock.Now()
	att, err := l.attestor.attest(ctx, now, l.st)
	if err != nil {
		return err
	}
	key, csr, err := l.newKeyAndCSR()
	if err != nil {
		return err
	}
	req := &meshcav1.RegisterRequest{
		Provider:        att.provider,
		Domain:          l.cfg.Domain,
		Service:         l.cfg.Service,
		AttestationData: att.data,
		ServiceToken:    att.serviceToken,
		Csr:             csr,
		TtlSeconds:      int64(l.a.cfg.TTL.D() / time.Second),
		ServerAuth:      l.cfg.ServerAuth,
		Hostname:        l.a.hostname,
	}
	resp, node, err := l.a.client.call(ctx, nil, "register", func(ctx context.Context, c meshcav1.IdentityClient) (*meshcav1.IdentityResponse, error) {
		return c.Register(ctx, req)
	})
	if err != nil {
		return err
	}
	if att.tokenDigest != "" {
		// The CA consumed the token: never present it again, whatever happens next.
		l.st.SpentTokens = append(l.st.SpentTokens, att.tokenDigest)
	}
	return l.install(resp, key, node, actRegister)
}

func (l *identityLoop) refresh(ctx context.Context) error {
	key, csr, err := l.newKeyAndCSR()
	if err != nil {
		return err
	}
	req := &meshcav1.RefreshRequest{
		Csr:        csr,
		TtlSeconds: int64(l.a.cfg.TTL.D() / time.Second),
		ServerAuth: l.cfg.ServerAuth,
		Hostname:   l.a.hostname,
	}
	if d, ok := l.attestor.(*documentAttestor); ok {
		// Providers that confirm refreshes get the current document; one that cannot be read
		// now is left out and the provider decides.
		if att, err := d.attest(ctx, l.a.clock.Now(), l.st); err == nil {
			req.AttestationData = att.data
		} else {
			l.log.Warn("agent: refreshing without the identity document", "error", err)
		}
	}
	held := l.cur
	resp, node, err := l.a.client.call(ctx, held.svid, "refresh", func(ctx context.Context, c meshcav1.IdentityClient) (*meshcav1.IdentityResponse, error) {
		return c.Refresh(ctx, req)
	})
	switch status.Code(err) {
	case codes.OK:
		return l.install(resp, key, node, actRefresh)
	case codes.PermissionDenied:
		// The CA refuses this certificate for good: a serial it no longer accepts means someone
		// else refreshed with this instance's certificate, and the instance is revoked. The
		// stale certificate must not be served any longer.
		l.log.Error("agent: CA refused to refresh: the instance is revoked or its serial was superseded; no longer serving this certificate, registering again if the attestation allows",
			"serial", held.serial, "error", err)
		l.drop()
		l.a.store.RemoveSVID(l.id)
	case codes.Unauthenticated:
		// The CA does not accept the certificate as a credential (expired by its clock, or
		// its root dropped): register again, serving the current one until then.
		l.log.Warn("agent: CA did not accept the certificate for a refresh; registering again", "serial", held.serial, "error", err)
		l.cur = nil
	}
	return err
}

// drop forgets the held certificate, here and in the state dir.
func (l *identityLoop) drop() {
	l.cur = nil
	l.st.Cert = nil
	if err := l.a.state.save(l.cfg.Name, l.st); err != nil {
		l.log.Error("agent: writing state", "error", err)
	}
}

// install checks a CA answer, keeps it in the state dir and serves it.
func (l *identityLoop) install(resp *meshcav1.IdentityResponse, key crypto.Signer, node string, act action) error {
	now := l.a.clock.Now()
	cur, respBundle, err := l.accept(resp, key, now)
	if err != nil {
		return fmt.Errorf("%s via %s: %w", act, node, err)
	}
	rec, err := cur.record()
	if err != nil {
		return err
	}
	l.st.Cert = rec
	if err := l.a.state.save(l.cfg.Name, l.st); err != nil {
		// Serving the new certificate matters more; the next rotation writes again.
		l.log.Error("agent: writing state; a restart will register again", "error", err)
	}
	l.setCurrent(cur)
	if respBundle != nil {
		l.a.bundleFromIdentityResponse(respBundle)
	}
	if err := l.a.store.SetSVID(cur.svid); err != nil {
		return fmt.Errorf("%s: serving: %w", act, err)
	}
	l.a.metrics.rotations.WithLabelValues(l.cfg.Name, act.String()).Inc()
	l.log.Info("agent: certificate "+act.String()+"ed", "node", node, "serial", cur.serial, "not_after", cur.notAfter(),
		"refresh_at", l.a.sched.refreshAt(*cur.holding(), l.r))
	return nil
}

// accept checks that resp holds a certificate for key, naming this identity and instance, that
// chains to the bundle (the one in resp, which came over a verified connection, or the current
// one).
func (l *identityLoop) accept(resp *meshcav1.IdentityResponse, key crypto.Signer, now time.Time) (*current, *x509bundle.Bundle, error) {
	certs, err := ca.ParseCertificatesPEM([]byte(resp.GetCertificate() + "\n" + resp.GetChain()))
	if err != nil {
		return nil, nil, fmt.Errorf("certificate and chain: %w: %w", ErrBadResponse, err)
	}
	svid := &x509svid.SVID{ID: l.id, Certificates: certs, PrivateKey: key}
	if err := checkPair(svid); err != nil {
		return nil, nil, fmt.Errorf("certificate: %w: %w", ErrBadResponse, err)
	}
	var trust x509bundle.Source = l.a.bundleSource()
	var respBundle *x509bundle.Bundle
	if resp.GetBundle() != "" {
		respBundle, err = ca.ParseBundlePEM(l.a.td, []byte(resp.GetBundle()))
		if err != nil {
			return nil, nil, fmt.Errorf("bundle: %w: %w", ErrBadResponse, err)
		}
		trust = respBundle
	}
	if _, _, err := x509svid.Verify(certs, trust, x509svid.WithTime(now)); err != nil {
		return nil, nil, fmt.Errorf("certificate: %w: %w", ErrBadResponse, err)
	}
	leaf := certs[0]
	if !hasDNS(leaf, l.names.InstanceDNS) {
		return nil, nil, fmt.Errorf("certificate: DNS SAN %q missing: %w", l.names.InstanceDNS, ErrBadResponse)
	}
	serial := leaf.SerialNumber.Text(16)
	if resp.GetSerial() != "" && resp.GetSerial() != serial {
		return nil, nil, fmt.Errorf("serial %q: the certificate's is %q: %w", resp.GetSerial(), serial, ErrBadResponse)
	}
	return &current{svid: svid, serial: serial, instanceID: l.cfg.InstanceID, received: now}, respBundle, nil
}

func hasDNS(c *x509.Certificate, name string) bool {
	for _, n := range c.DNSNames {
		if n == name {
			return true
		}
	}
	return false
}

// newKeyAndCSR makes a new key on this host and a PEM CSR naming exactly what the CA's policy
// demands of this identity. The key never leaves the agent.
func (l *identityLoop) newKeyAndCSR() (crypto.Signer, []byte, error) {
	key, err := signer.GenerateKey(l.a.keyType, rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("key_type %s: %w", l.a.keyType, err)
	}
	uri, err := url.Parse(l.names.SPIFFEID.String())
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: l.names.CommonName},
		DNSNames: []string{l.names.ServiceDNS, l.names.InstanceDNS},
		URIs:     []*url.URL{uri},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("CSR: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
