package sds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ErrCallerUnknown is returned when a caller maps to no workload identity; the transports
// answer it with PermissionDenied and serve nothing.
var ErrCallerUnknown = errors.New("caller is not mapped to a workload identity")

// IdentityResolver tells which workload identity the caller of a gRPC call may receive. It is
// decided from the connection (socket, peer credentials, or a client certificate on a CA node),
// never from anything the client sends.
type IdentityResolver interface {
	Resolve(ctx context.Context) (spiffeid.ID, error)
}

// Caller is the process on the other end of a Unix socket connection, as the kernel reports it.
type Caller struct {
	// UID, GID and PID are the peer's credentials at connect time (SO_PEERCRED).
	UID, GID uint32
	PID      int32
	// HasCredentials reports whether UID, GID and PID were read from the kernel; without them
	// only the socket can map the caller.
	HasCredentials bool
	// Socket is the path of the listening socket the caller connected to.
	Socket string
}

// CallerAuthInfo is the credentials.AuthInfo that PeerCredentials attaches to each connection.
type CallerAuthInfo struct {
	credentials.CommonAuthInfo
	Caller Caller
}

// AuthType implements credentials.AuthInfo.
func (CallerAuthInfo) AuthType() string { return peerCredType }

const peerCredType = "unix-peercred"

// PeerCredentials returns gRPC server transport credentials for Unix sockets that read the
// caller's uid, gid and pid from the kernel (SO_PEERCRED) and the socket path it connected to,
// and hand them to handlers as a CallerAuthInfo. The connection itself is not encrypted: it never
// leaves the host. A connection that is not a Unix socket is refused.
func PeerCredentials() credentials.TransportCredentials { return peerCreds{} }

type peerCreds struct{}

func (peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("peer credentials: connection from %s: must be a Unix socket", conn.RemoteAddr())
	}
	c, err := peerCredentials(uc)
	if err != nil {
		return nil, nil, fmt.Errorf("peer credentials: %w", err)
	}
	if a, ok := uc.LocalAddr().(*net.UnixAddr); ok {
		c.Socket = a.Name
	}
	return conn, CallerAuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
		Caller:         c,
	}, nil
}

func (peerCreds) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, CallerAuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: peerCredType}
}

func (peerCreds) Clone() credentials.TransportCredentials { return peerCreds{} }

func (peerCreds) OverrideServerName(string) error { return nil }

// CallerFromContext returns the Caller of a gRPC call served with PeerCredentials.
func CallerFromContext(ctx context.Context) (Caller, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Caller{}, false
	}
	ai, ok := p.AuthInfo.(CallerAuthInfo)
	if !ok {
		return Caller{}, false
	}
	return ai.Caller, true
}

// CallerTable maps callers to workload identities, as the agent's config says. A socket bound to
// an identity wins over peer credentials; a uid mapping wins over a gid mapping. A caller that
// matches nothing gets ErrCallerUnknown.
type CallerTable struct {
	// BySocket binds a listening socket (its path) to one identity: whoever connects to it is
	// that identity. Use it with file permissions on the socket.
	BySocket map[string]spiffeid.ID
	// ByUID maps a peer's uid to an identity.
	ByUID map[uint32]spiffeid.ID
	// ByGID maps a peer's gid to an identity.
	ByGID map[uint32]spiffeid.ID
}

var _ IdentityResolver = (*CallerTable)(nil)

// Resolve implements IdentityResolver for calls served with PeerCredentials.
func (t *CallerTable) Resolve(ctx context.Context) (spiffeid.ID, error) {
	c, ok := CallerFromContext(ctx)
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("caller: no peer credentials on the connection (serve with sds.PeerCredentials): %w", ErrCallerUnknown)
	}
	return t.Lookup(c)
}

// Lookup maps one caller to its identity.
func (t *CallerTable) Lookup(c Caller) (spiffeid.ID, error) {
	if c.Socket != "" {
		if id, ok := t.BySocket[c.Socket]; ok {
			return id, nil
		}
		if id, ok := t.BySocket[filepath.Clean(c.Socket)]; ok {
			return id, nil
		}
	}
	if c.HasCredentials {
		if id, ok := t.ByUID[c.UID]; ok {
			return id, nil
		}
		if id, ok := t.ByGID[c.GID]; ok {
			return id, nil
		}
	}
	return spiffeid.ID{}, fmt.Errorf("caller uid %d gid %d on socket %q: %w", c.UID, c.GID, c.Socket, ErrCallerUnknown)
}

// TLSPeerResolver resolves a caller from the client certificate of an mTLS connection (a CA node
// streaming bundles to agents): the identity is the URI SAN of the verified leaf. The gRPC
// server must require and verify client certificates; an unverified or missing one is refused.
type TLSPeerResolver struct{}

var _ IdentityResolver = TLSPeerResolver{}

// Resolve implements IdentityResolver.
func (TLSPeerResolver) Resolve(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("caller: no peer on the call: %w", ErrCallerUnknown)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("caller: connection is not TLS: %w", ErrCallerUnknown)
	}
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return spiffeid.ID{}, fmt.Errorf("caller: no verified client certificate: %w", ErrCallerUnknown)
	}
	id, err := x509svid.IDFromCert(info.State.VerifiedChains[0][0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("caller: client certificate URI SAN: %v: %w", err, ErrCallerUnknown)
	}
	return id, nil
}
