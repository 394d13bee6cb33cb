package raftstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrPeerRefused is wrapped by every error of the cluster-port peer check.
var ErrPeerRefused = errors.New("raftstore: peer refused")

// PeerRefusedError says why a cluster connection was refused.
type PeerRefusedError struct {
	// Reason is one of the Refused* constants.
	Reason string
	// ID is the peer's SPIFFE ID when it could be read.
	ID string
	// Err is the underlying cause.
	Err error
}

// Error names the reason, the peer and the cause.
func (e *PeerRefusedError) Error() string {
	msg := "raftstore: peer refused (" + e.Reason + ")"
	if e.ID != "" {
		msg += ": " + e.ID
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap lets errors.Is match ErrPeerRefused and the cause.
func (e *PeerRefusedError) Unwrap() []error { return []error{ErrPeerRefused, e.Err} }

// serverPathPrefix is the SPIFFE ID path of a CA node, followed by its node id.
const serverPathPrefix = "/meshca/server/"

// peerVerifier is the peer check run in every TLS handshake on the cluster port, on both
// sides: the certificate chains to the cluster CA, carries exactly one SPIFFE URI
// spiffe://<td>/meshca/server/<id>, and <id> is in the current Raft configuration. While the
// configuration is empty (before bootstrap or join) any server of the trust domain passes.
type peerVerifier struct {
	trustDomain spiffeid.TrustDomain
	bundle      x509bundle.Source
	members     func() map[string]bool
	refused     *prometheus.CounterVec
	logger      *slog.Logger
}

// verify has the signature of tls.Config.VerifyPeerCertificate. It counts and logs refusals.
func (v *peerVerifier) verify(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	if _, err := v.check(rawCerts); err != nil {
		var pr *PeerRefusedError
		if errors.As(err, &pr) {
			v.refused.WithLabelValues(pr.Reason).Inc()
			v.logger.Warn("cluster connection refused", "reason", pr.Reason, "peer", pr.ID, "err", pr.Err)
		}
		return err
	}
	return nil
}

// check returns the peer's node id, or a *PeerRefusedError.
func (v *peerVerifier) check(rawCerts [][]byte) (string, error) {
	refuse := func(reason, id string, err error) (string, error) {
		return "", &PeerRefusedError{Reason: reason, ID: id, Err: err}
	}
	if len(rawCerts) == 0 {
		return refuse(RefusedNoCertificate, "", errors.New("no certificate presented"))
	}
	leaf, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return refuse(RefusedBadCertificate, "", err)
	}
	// Classify first, so the counter says why; go-spiffe then does the full verification.
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return refuse(RefusedNotSPIFFE, "", err)
	}
	if id.TrustDomain() != v.trustDomain {
		return refuse(RefusedWrongTrustDomain, id.String(), fmt.Errorf("trust domain %q, want %q", id.TrustDomain().Name(), v.trustDomain.Name()))
	}
	nodeID, ok := strings.CutPrefix(id.Path(), serverPathPrefix)
	if !ok || nodeID == "" || strings.Contains(nodeID, "/") {
		return refuse(RefusedNotServer, id.String(), fmt.Errorf("path %q is not %s<node-id>", id.Path(), serverPathPrefix))
	}
	if _, _, err := x509svid.ParseAndVerify(rawCerts, v.bundle); err != nil {
		return refuse(RefusedUntrusted, id.String(), err)
	}
	members := v.members()
	if len(members) > 0 && !members[nodeID] {
		return refuse(RefusedNotMember, id.String(), fmt.Errorf("node %q is not in the raft configuration", nodeID))
	}
	return nodeID, nil
}

// serverTLSConfig is the cluster port's TLS config: TLS 1.3, a client certificate required
// and checked by the peer verifier, ALPN choosing Raft or gRPC.
func (n *Node) serverTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: tlsconfig.GetCertificate(n.cfg.SVID),
		// RequestClientCert (not Require) so a missing certificate reaches the verifier and
		// is counted like every other refusal.
		ClientAuth:            tls.RequestClientCert,
		VerifyPeerCertificate: n.peers.verify,
		NextProtos:            []string{ALPNRaft, ALPNGRPC},
	}
}

// clientTLSConfig is the config for dialling another node with the ALPN protocol proto. The
// standard hostname check is replaced by the peer verifier (nodes are named by SPIFFE ID,
// not DNS), as go-spiffe's tlsconfig does.
func (n *Node) clientTLSConfig(proto string) *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		GetClientCertificate:  tlsconfig.GetClientCertificate(n.cfg.SVID),
		InsecureSkipVerify:    true, // the chain is verified in VerifyPeerCertificate
		VerifyPeerCertificate: n.peers.verify,
		NextProtos:            []string{proto},
	}
}

// streamLayer is Raft's raft.StreamLayer: it accepts the cluster-port connections that
// negotiated ALPNRaft and dials others with mutual TLS.
type streamLayer struct {
	net.Listener
	advertise string
	tlsConfig *tls.Config
}

var _ raft.StreamLayer = (*streamLayer)(nil)

// Addr returns the advertised address, which is what Raft stores in the configuration.
func (s *streamLayer) Addr() net.Addr { return advertisedAddr(s.advertise) }

// Dial opens a mutual-TLS Raft connection to address.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: s.tlsConfig}
	conn, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raftstore: dial %s: %w", address, err)
	}
	if p := conn.(*tls.Conn).ConnectionState().NegotiatedProtocol; p != ALPNRaft {
		conn.Close()
		return nil, fmt.Errorf("raftstore: dial %s: ALPN negotiated %q, want %q", address, p, ALPNRaft)
	}
	return conn, nil
}

type advertisedAddr string

func (a advertisedAddr) Network() string { return "tcp" }
func (a advertisedAddr) String() string  { return string(a) }
