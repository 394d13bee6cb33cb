package signer_test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/meshca/meshca/ca/signer"
)

// A CA key is stored sealed under a key-encryption key; opening it with another KEK is
// reported as such.
func ExampleMarshalEncrypted() {
	raw := make([]byte, signer.KEKSize)
	_, _ = rand.Read(raw)
	kek, _ := signer.ParseKEK([]byte(hex.EncodeToString(raw))) // as read from kek_file or kek_env

	key, _ := signer.GenerateSoftware(signer.ECDSAP256)
	sealed, _ := signer.MarshalEncrypted(key, kek)

	opened, err := signer.ParseEncrypted(sealed, kek)
	fmt.Println(opened.KeyType(), opened.KeyID() == key.KeyID(), err)

	_, _ = rand.Read(raw)
	other, _ := signer.NewKEK(raw)
	_, err = signer.ParseEncrypted(sealed, other)
	fmt.Println(errors.Is(err, signer.ErrWrongKEK))
	// Output:
	// ecdsa-p256 true <nil>
	// true
}
