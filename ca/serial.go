package ca

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/big"
)

// SerialBits is how many random bits a serial number from NewSerial has: the most a
// positive DER INTEGER holds in the 20 octets RFC 5280 allows, well over the 128 bits
// DESIGN.md asks for.
const SerialBits = 159

// maxSerialDraws bounds the retries on an all-zero draw, so a broken random source fails
// instead of looping.
const maxSerialDraws = 4

// ErrRandom means the random source failed or produced only zeros.
var ErrRandom = errors.New("random source failed")

// NewSerial draws a positive random serial number of up to SerialBits bits from random
// (crypto/rand when nil). It is kept apart from the pure policy so a caller can draw the
// serial once and carry it in a replicated command.
func NewSerial(random io.Reader) (*big.Int, error) {
	if random == nil {
		random = rand.Reader
	}
	var b [(SerialBits + 7) / 8]byte
	for range maxSerialDraws {
		if _, err := io.ReadFull(random, b[:]); err != nil {
			return nil, fmt.Errorf("serial: %w: %w", ErrRandom, err)
		}
		b[0] &= 0x7f // 160 bits drawn, the top one cleared: 159 bits, always positive or zero
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
	return nil, fmt.Errorf("serial: %w: %d draws were all zero", ErrRandom, maxSerialDraws)
}
