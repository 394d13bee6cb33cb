//go:build !cgo

package signer

import (
	"crypto"
	"errors"
	"testing"
)

func TestPKCS11WithoutCgoSaysItNeedsCgo(t *testing.T) {
	cfg := validPKCS11Config()
	for name, open := range map[string]func(PKCS11Config) (*PKCS11, error){
		"OpenPKCS11": OpenPKCS11, "GeneratePKCS11": GeneratePKCS11, "OpenOrGeneratePKCS11": OpenOrGeneratePKCS11,
	} {
		t.Run(name, func(t *testing.T) {
			s, err := open(cfg)
			if !errors.Is(err, ErrPKCS11NeedsCgo) || s != nil {
				t.Fatalf("%s = %v, %v; want nil, ErrPKCS11NeedsCgo", name, s, err)
			}
		})
	}
	bad := cfg
	bad.KeyLabel = ""
	if _, err := OpenPKCS11(bad); !errors.Is(err, ErrPKCS11Config) {
		t.Fatalf("an invalid config should still be reported as such: %v", err)
	}
	var s PKCS11
	if _, err := s.Sign(nil, nil, crypto.SHA256); !errors.Is(err, ErrPKCS11NeedsCgo) {
		t.Fatalf("Sign: %v", err)
	}
}
