package sds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

func tlsPair(svid *x509svid.SVID) tls.Certificate {
	c := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, x := range svid.Certificates {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// A CA node serves the same SDS server over mTLS: the caller is the client certificate's
// SPIFFE ID.
func TestSDSOverMutualTLSResolvesTheClientCertificate(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	agent := spiffeid.RequireFromString("spiffe://mesh.example/ns/sys.auth/sa/agent")
	agentSVID := ca.issue(t, agent)
	mustSetSVID(t, store, agentSVID)
	roots := x509.NewCertPool()
	roots.AddCert(ca.root)

	srv, err := NewSDSServer(SDSConfig{Source: store, Resolver: TLSPeerResolver{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	serverSVID := ca.issue(t, spiffeid.RequireFromString("spiffe://mesh.example/ns/sys.auth/sa/meshca"), "ca.mesh.example")
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{tlsPair(serverSVID)},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    roots,
		Time:         func() time.Time { return testNow },
		MinVersion:   tls.VersionTLS13,
	})))
	srv.Register(g)
	sock := filepath.Join(t.TempDir(), "ca.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = g.Serve(lis) }()
	go func() { defer wg.Done(); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); srv.Close(); g.Stop(); wg.Wait() })

	dialTLS := func(certs []tls.Certificate) secretservice.SecretDiscoveryServiceClient {
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			Certificates: certs,
			RootCAs:      roots,
			ServerName:   "ca.mesh.example",
			Time:         func() time.Time { return testNow },
			MinVersion:   tls.VersionTLS13,
		})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return secretservice.NewSecretDiscoveryServiceClient(conn)
	}

	t.Run("a verified client certificate is the caller's identity", func(t *testing.T) {
		st := openSotW(t, dialTLS([]tls.Certificate{tlsPair(agentSVID)}))
		st.subscribe(NameDefault, NameRootCA)
		got := sotwSecrets(t, st.recv())
		if leafOf(t, got[NameDefault])[0].SerialNumber.String() != leafSerial(agentSVID) {
			t.Fatal("not the client certificate's identity")
		}
	})
	t.Run("a client without a certificate gets PermissionDenied", func(t *testing.T) {
		_, err := dialTLS(nil).FetchSecrets(streamCtx(t), &discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{NameRootCA}})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %v, want PermissionDenied", err)
		}
	})
}
