//go:build !linux

package sds

import "net"

// peerCredentials is only implemented on Linux (SO_PEERCRED). Elsewhere a caller has no
// credentials and can only be mapped by the socket it connected to (CallerTable.BySocket).
func peerCredentials(*net.UnixConn) (Caller, error) {
	return Caller{}, nil
}
