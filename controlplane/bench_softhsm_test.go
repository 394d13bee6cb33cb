//go:build cgo

package controlplane_test

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/signer"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/internal/clustertest"
	"github.com/meshca/meshca/internal/testenv"
)

// BenchmarkClusterSoftHSM is BenchmarkCluster with the CA key on a SoftHSM2 token: three real
// meshca-server processes (built with cgo, as the released one is) in pkcs11 mode, each with
// its own copy of one token, Register and Refresh at concurrency 1, 16 and 64 through the
// leader and a follower. Every certificate is signed by the token (and verified in software by
// crypto/x509).
//
// Without SoftHSM2 it skips, or fails when MESHCA_REQUIRE_SOFTHSM or CI is set.
//
// Run it briefly, e.g. go test -run '^$' -bench ClusterSoftHSM -benchtime 200x ./controlplane/
func BenchmarkClusterSoftHSM(b *testing.B) {
	benchClusterMatrix(b, startE2ESoftHSM(b))
}

// startE2ESoftHSM is startE2E with the CA key generated on a fresh SoftHSM2 token. The test
// generates the key before the nodes start, gives each node a copy of the token, and signs the
// provider's certificate with the key once the first node has written the root certificate.
func startE2ESoftHSM(b *testing.B) *e2eCluster {
	b.Helper()
	tok := testenv.NewSoftHSMToken(b, "meshca-bench")
	const keyLabel = "meshca-root"
	p := signer.DefaultPKCS11Config()
	p.ModulePath, p.TokenLabel, p.KeyLabel, p.PINFile = tok.ModulePath, tok.Label, keyLabel, tok.PINFile
	p.Logger = slog.New(slog.DiscardHandler) // keep the benchmark output to results
	key, err := signer.GeneratePKCS11(p)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { key.Close() })
	// Each node gets its own copy of the token, as each host of a cluster has its own HSM
	// holding the CA key: SoftHSM2 processes sharing one token directory while they start
	// can read a token file another is rewriting and find no token.
	nodeEnv := make([][]string, 3)
	for i := range nodeEnv {
		dir := filepath.Join(b.TempDir(), "tokens")
		if err := os.CopyFS(dir, os.DirFS(tok.TokenDir)); err != nil {
			b.Fatal(err)
		}
		conf := filepath.Join(filepath.Dir(dir), "softhsm2.conf")
		text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", dir)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			b.Fatal(err)
		}
		nodeEnv[i] = []string{"SOFTHSM2_CONF=" + conf}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	url := "https://" + ln.Addr().String() + "/confirm"
	c := clustertest.Start(b, clustertest.Options{
		Providers: []controlplane.ProviderConfig{{Name: e2eProvider, DNSSuffix: e2eSuffix, ConfirmEndpoint: url}},
		NodeEnv:   func(i int) []string { return nodeEnv[i] },
		Tune: func(i int, cfg *controlplane.Config) {
			cfg.Services = []controlplane.ServiceConfig{{Name: "sports.api", LaunchGrants: []string{"sys.auth.*"}}}
			benchLimits(i, cfg)
			cfg.CA = controlplane.CAConfig{Mode: controlplane.CAModePKCS11, Dir: cfg.CA.Dir, KeyType: "ecdsa-p256",
				PKCS11: controlplane.PKCS11Config{Module: tok.ModulePath, TokenLabel: tok.Label, KeyLabel: keyLabel, PINFile: tok.PINFile}}
		},
	})
	raw, err := os.ReadFile(filepath.Join(c.CADir(), controlplane.SelfSignedCertFile))
	if err != nil {
		b.Fatal(err)
	}
	roots, err := ca.ParseCertificatesPEM(raw)
	if err != nil {
		b.Fatal(err)
	}
	// NewIssuer checks the root's public key is the token key's: the nodes sign with the token.
	iss, err := ca.NewIssuer(ca.IssuerParts{Certificate: roots[0], Key: key, Roots: roots}, time.Now())
	if err != nil {
		b.Fatalf("the root the nodes wrote is not the token key's: %v", err)
	}
	c.UseIssuer(iss)
	id, err := controlplane.ServiceSPIFFEID(c.TrustDomain(), e2eProvider)
	if err != nil {
		b.Fatal(err)
	}
	cert := c.IssueCert(id, clustertest.CertOptions{})
	svid := &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert.Leaf}, PrivateKey: cert.PrivateKey.(crypto.Signer)}
	serveProvider(b, ln, svid, c)
	return &e2eCluster{Cluster: c, providerURL: url}
}
