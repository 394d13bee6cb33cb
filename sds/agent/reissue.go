package agent

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/sds"
)

// issuerNotice is what the cluster last said about its issuer on the bundle stream: which
// issuer signs now and whether certificates it did not sign are to be replaced at once.
type issuerNotice struct {
	id     string
	issuer *x509.Certificate
	// requested is the CA's time of the activate that asked for reissue (Unix nanoseconds); 0
	// when certificates are replaced on their normal schedule.
	requested int64
	// heard is when the agent received this notice, by its own clock: reissue jitter starts here.
	heard time.Time
}

// asks reports whether the notice asks to replace leaf now: reissue was requested and the active
// issuer did not sign leaf.
func (n *issuerNotice) asks(leaf *x509.Certificate) bool {
	return n != nil && n.requested != 0 && !signedBy(leaf, n.issuer)
}

// signedBy reports whether issuer signed leaf.
func signedBy(leaf, issuer *x509.Certificate) bool {
	return bytes.Equal(leaf.RawIssuer, issuer.RawSubject) && leaf.CheckSignatureFrom(issuer) == nil
}

// decodeIssuerNotice reads the issuer notice from a bundle stream response; nil when the response
// does not carry one (a CA node that does not send it, or a response before the CA is set).
func decodeIssuerNotice(resp *discovery.DiscoveryResponse) (*issuerNotice, error) {
	for i, a := range resp.GetResources() {
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			return nil, fmt.Errorf("resources[%d]: %w", i, err)
		}
		if s.GetName() != sds.NameIssuerNotice {
			continue
		}
		raw := s.GetGenericSecret().GetSecret().GetInlineBytes()
		if len(raw) == 0 {
			return nil, fmt.Errorf("%s: generic_secret.secret.inline_bytes: empty", sds.NameIssuerNotice)
		}
		m := &meshcav1.IssuerNotice{}
		if err := proto.Unmarshal(raw, m); err != nil {
			return nil, fmt.Errorf("%s: %w", sds.NameIssuerNotice, err)
		}
		if m.GetIssuerId() == "" {
			return nil, fmt.Errorf("%s: issuer_id: empty", sds.NameIssuerNotice)
		}
		if m.GetReissueRequested() < 0 {
			return nil, fmt.Errorf("%s: reissue_requested: %d is negative", sds.NameIssuerNotice, m.GetReissueRequested())
		}
		c, err := x509.ParseCertificate(m.GetIssuerCertificate())
		if err != nil {
			return nil, fmt.Errorf("%s: issuer_certificate: %w", sds.NameIssuerNotice, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("%s: issuer_certificate: %w", sds.NameIssuerNotice, errors.New("not a CA certificate"))
		}
		return &issuerNotice{id: m.GetIssuerId(), issuer: c, requested: m.GetReissueRequested()}, nil
	}
	return nil, nil
}

// issuerWatch holds the last issuer notice and wakes the identity loops when it changes.
type issuerWatch struct {
	mu      sync.Mutex
	notice  *issuerNotice
	changed chan struct{}
}

func newIssuerWatch() *issuerWatch { return &issuerWatch{changed: make(chan struct{})} }

// current returns the notice held (nil before the first) and a channel closed at the next change.
func (w *issuerWatch) current() (*issuerNotice, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.notice, w.changed
}

// set keeps n unless it says what the held notice says (a resend keeps the time it was first
// heard, so jitter does not start over); it reports whether the notice changed.
func (w *issuerWatch) set(n *issuerNotice) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if old := w.notice; old != nil && old.id == n.id && old.requested == n.requested && old.issuer.Equal(n.issuer) {
		return false
	}
	w.notice = n
	close(w.changed)
	w.changed = make(chan struct{})
	return true
}

// chainsTo checks that issuer is one of roots or chains to one of them at now.
func chainsTo(issuer *x509.Certificate, roots []*x509.Certificate, now time.Time) error {
	pool := x509.NewCertPool()
	for _, r := range roots {
		if r.Equal(issuer) {
			return nil
		}
		pool.AddCert(r)
	}
	_, err := issuer.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}
