//go:build cgo

package signer

import (
	"errors"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// sessionPool lends logged-in PKCS#11 sessions, one caller at a time per session (a session is
// not safe for concurrent use), and keeps at most max of them open. A caller holds one of the
// max slots from get until put or discard.
type sessionPool struct {
	mod   *p11Module
	ctx   *pkcs11.Ctx
	pin   string
	pinOf string // where the PIN came from, for messages

	slots chan struct{} // a token per session that may be open

	mu      sync.Mutex
	slot    uint // the token's slot ID; changes if the token is found again after removal
	idle    []pkcs11.SessionHandle
	open    int // sessions open now, idle and lent
	maxOpen int // the most ever open at once, for tests
	opened  int // sessions ever opened, for tests
	closed  bool
}

func newSessionPool(mod *p11Module, slot uint, pin, pinOf string, max int) *sessionPool {
	return &sessionPool{mod: mod, ctx: mod.ctx, slot: slot, pin: pin, pinOf: pinOf, slots: make(chan struct{}, max)}
}

// get lends a session, opening and logging in a new one when none is idle. It waits while
// max sessions are lent.
func (p *sessionPool) get() (pkcs11.SessionHandle, error) {
	p.slots <- struct{}{}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.slots
		return 0, ErrSignerClosed
	}
	if n := len(p.idle); n > 0 {
		sh := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return sh, nil
	}
	p.mu.Unlock()
	sh, err := p.openSession()
	if err != nil {
		<-p.slots
		return 0, err
	}
	return sh, nil
}

// put returns a lent session for reuse.
func (p *sessionPool) put(sh pkcs11.SessionHandle) {
	p.mu.Lock()
	p.idle = append(p.idle, sh)
	p.mu.Unlock()
	<-p.slots
}

// discard closes a lent session that is broken and gives its slot back.
func (p *sessionPool) discard(sh pkcs11.SessionHandle) {
	p.closeSession(sh)
	<-p.slots
}

// replace closes a lent session that is broken and lends a fresh, logged-in one in its
// place, keeping the caller's slot. On error the slot is given back.
func (p *sessionPool) replace(sh pkcs11.SessionHandle) (pkcs11.SessionHandle, error) {
	p.closeSession(sh)
	fresh, err := p.openSession()
	if err != nil {
		<-p.slots
		return 0, err
	}
	return fresh, nil
}

// openSession opens a read-only session on the token and logs the user in. The login is the
// application's, not the session's: it is already in place while any other session of this
// process on the token is open, which the token reports as CKR_USER_ALREADY_LOGGED_IN.
func (p *sessionPool) openSession() (pkcs11.SessionHandle, error) {
	p.mu.Lock()
	slot := p.slot
	p.mu.Unlock()
	sh, err := p.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return 0, fmt.Errorf("pkcs11: C_OpenSession on slot %d: %w", slot, err)
	}
	if err := p.mod.login(sh, slot, p.pin, p.pinOf); err != nil {
		_ = p.ctx.CloseSession(sh)
		return 0, err
	}
	p.mu.Lock()
	p.open++
	p.opened++
	p.maxOpen = max(p.maxOpen, p.open)
	p.mu.Unlock()
	return sh, nil
}

// closeSession closes a session the pool counted as open. A session the token already
// dropped fails to close, which is expected here.
func (p *sessionPool) closeSession(sh pkcs11.SessionHandle) {
	_ = p.ctx.CloseSession(sh)
	p.mu.Lock()
	p.open--
	p.mu.Unlock()
}

// setSlot points new sessions at another slot ID (the token was found again).
func (p *sessionPool) setSlot(slot uint) {
	p.mu.Lock()
	p.slot = slot
	p.mu.Unlock()
}

// close waits for every lent session to come back, closes all sessions and makes later gets
// fail with ErrSignerClosed.
func (p *sessionPool) close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	// Holding every slot means no session is lent.
	for range cap(p.slots) {
		p.slots <- struct{}{}
	}
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	var errs []error
	for _, sh := range idle {
		if err := p.ctx.CloseSession(sh); err != nil && !sessionLost(err) {
			errs = append(errs, fmt.Errorf("pkcs11: C_CloseSession: %w", err))
		}
		p.mu.Lock()
		p.open--
		p.mu.Unlock()
	}
	// Let any caller that was waiting for a slot in get see closed and return.
	for range cap(p.slots) {
		<-p.slots
	}
	return errors.Join(errs...)
}

// stats reports sessions open now, the most open at once and how many were ever opened.
func (p *sessionPool) stats() (open, maxOpen, opened int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open, p.maxOpen, p.opened
}

// sessionLost reports errors after which the session (or the login it relied on) is gone and
// a fresh session may succeed.
func sessionLost(err error) bool {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_OBJECT_HANDLE_INVALID:
		return true
	}
	return false
}

// tokenLost reports errors after which the token's slot may have changed.
func tokenLost(err error) bool {
	return errors.Is(err, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)) ||
		errors.Is(err, pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT)) ||
		errors.Is(err, pkcs11.Error(pkcs11.CKR_SLOT_ID_INVALID))
}
