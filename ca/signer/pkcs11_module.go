//go:build cgo

package signer

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/miekg/pkcs11"
)

// A PKCS#11 module is loaded and initialized once per process: a second C_Initialize of the
// same library fails, and C_Finalize ends every session of every user of it. So signers that
// name the same module share one context, counted here, and the last Close finalizes it.

// p11Module is one loaded and initialized PKCS#11 library.
type p11Module struct {
	path string
	ctx  *pkcs11.Ctx
	refs int // guarded by modules.mu
	// finalize is false when the library was already initialized by someone else in this
	// process; then it is theirs to finalize.
	finalize bool

	// loginMu guards pins: per slot, the hash of the PIN the token accepted. The user's login
	// belongs to the process, not to a session, so once one signer has logged in the token
	// answers every later C_Login with CKR_USER_ALREADY_LOGGED_IN without looking at the PIN;
	// a later signer's PIN is compared with the accepted one instead.
	loginMu sync.Mutex
	pins    map[uint][sha256.Size]byte
}

var modules = struct {
	mu sync.Mutex
	m  map[string]*p11Module
}{m: make(map[string]*p11Module)}

// moduleKey makes two spellings of one library (a symlink and its target) share a context.
func moduleKey(path string) string {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		return real
	}
	return path
}

// acquireModule loads and initializes the module at path, or takes another reference to the
// one already loaded.
func acquireModule(path string) (*p11Module, error) {
	key := moduleKey(path)
	modules.mu.Lock()
	defer modules.mu.Unlock()
	if m, ok := modules.m[key]; ok {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(key)
	if ctx == nil {
		return nil, fmt.Errorf("pkcs11 module_path %s: cannot load the PKCS#11 module (dlopen failed or it has no C_GetFunctionList): %w", path, ErrPKCS11Config)
	}
	m := &p11Module{path: key, ctx: ctx, refs: 1, finalize: true, pins: make(map[uint][sha256.Size]byte)}
	if err := ctx.Initialize(); err != nil {
		if !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
			ctx.Destroy()
			return nil, fmt.Errorf("pkcs11 module_path %s: C_Initialize: %w", path, err)
		}
		m.finalize = false
	}
	modules.m[key] = m
	return m, nil
}

// release drops a reference; the last one finalizes and unloads the module.
func (m *p11Module) release() error {
	modules.mu.Lock()
	defer modules.mu.Unlock()
	m.refs--
	if m.refs > 0 {
		return nil
	}
	delete(modules.m, m.path)
	var err error
	if m.finalize {
		if ferr := m.ctx.Finalize(); ferr != nil {
			err = fmt.Errorf("pkcs11 module %s: C_Finalize: %w", m.path, ferr)
		}
	}
	m.ctx.Destroy()
	return err
}

// login logs the user in on sh (a session on slot). pinOf says where the PIN came from, for
// messages. A wrong PIN gives ErrPINIncorrect, also when the process is already logged in
// with the right one.
func (m *p11Module) login(sh pkcs11.SessionHandle, slot uint, pin, pinOf string) error {
	sum := sha256.Sum256([]byte(pin))
	m.loginMu.Lock()
	defer m.loginMu.Unlock()
	err := m.ctx.Login(sh, pkcs11.CKU_USER, pin)
	switch {
	case err == nil:
		m.pins[slot] = sum
		return nil
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)):
		if accepted, ok := m.pins[slot]; ok && subtle.ConstantTimeCompare(accepted[:], sum[:]) != 1 {
			return fmt.Errorf("pkcs11: the PIN from %s differs from the PIN this process logged in to the token with: %w", pinOf, ErrPINIncorrect)
		}
		return nil
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)),
		errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_INVALID)),
		errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_LEN_RANGE)),
		errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_EXPIRED)),
		errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_LOCKED)):
		return fmt.Errorf("pkcs11: C_Login with the PIN from %s: %w: %w", pinOf, ErrPINIncorrect, err)
	}
	return fmt.Errorf("pkcs11: C_Login with the PIN from %s: %w", pinOf, err)
}

// loadedModules is how many modules are loaded, for tests.
func loadedModules() int {
	modules.mu.Lock()
	defer modules.mu.Unlock()
	return len(modules.m)
}
