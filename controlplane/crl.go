package controlplane

import (
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/meshca/meshca/ca"
)

// CRL lifetimes: a CRL is valid for crlValidity and regenerated after crlRefresh even when
// nothing changed, so a cached copy never goes stale at a reader.
const (
	crlValidity = 24 * time.Hour
	crlRefresh  = 12 * time.Hour
)

// crlCache holds the last CRL built and what it was built from.
type crlCache struct {
	mu    sync.Mutex
	key   string
	der   []byte
	built time.Time
}

// CRL returns the DER certificate revocation list of the replicated revocations, signed by the
// active issuer. It is rebuilt when the revocations or the issuer change (the CA record's CRL
// number moves with every revocation) and every crlRefresh; otherwise the cached list is
// returned.
func (s *Server) CRL() ([]byte, error) {
	auth, issuer, err := s.Authority()
	if err != nil {
		return nil, err
	}
	st := s.fsm.State()
	rec, err := st.CA()
	if err != nil {
		return nil, refuse(ErrNotReady, "ca", "the CA record has not reached this node yet")
	}
	key := fmt.Sprintf("%s/%d", issuer.GetId(), rec.GetCrlNumber())
	now := s.now()
	s.crl.mu.Lock()
	defer s.crl.mu.Unlock()
	if s.crl.key == key && now.Sub(s.crl.built) < crlRefresh && !now.Before(s.crl.built) {
		return s.crl.der, nil
	}
	var revoked []ca.Revocation
	for _, r := range st.Revocations() {
		serial, ok := new(big.Int).SetString(r.GetSerial(), 16)
		if !ok {
			continue
		}
		revoked = append(revoked, ca.Revocation{
			Serial:    serial,
			RevokedAt: time.Unix(0, r.GetTime()),
			Reason:    int(r.GetReason()),
			NotAfter:  time.Unix(0, r.GetNotAfter()),
		})
	}
	// The CRL number carries the record's revocation counter in its high bits, so a list
	// built after a later revocation always has a higher number (on any node), and the build
	// time in seconds in its low bits, so a list rebuilt with no revocation in between still
	// gets a higher number than the last.
	number := new(big.Int).Lsh(new(big.Int).SetUint64(rec.GetCrlNumber()+1), 40)
	number.Add(number, big.NewInt(now.Unix()&(1<<40-1)))
	der, err := auth.CRL(ca.CRLRequest{
		Number:     number,
		ThisUpdate: now,
		NextUpdate: now.Add(crlValidity),
		Revoked:    revoked,
	})
	if err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	s.crl.key, s.crl.der, s.crl.built = key, der, now
	return der, nil
}
