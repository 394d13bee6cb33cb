//go:build !unix

package controlplane

import (
	"errors"
	"os"
)

// lockFile creates path exclusively; without flock a crashed start leaves the file behind and
// the operator removes it.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, errors.New(path + " exists: another node is generating the CA, or a crashed one left it (remove it)")
		}
		return nil, err
	}
	return func() { f.Close(); os.Remove(path) }, nil
}
