package controlplane_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/controlplane"
	"github.com/meshca/meshca/controlplane/confirm"
	"github.com/meshca/meshca/internal/clustertest"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// The e2e provider and the service it launches.
const (
	e2eProvider = "sys.auth.e2e"
	e2eSuffix   = "e2e.mesh.test"
)

// e2eCluster is a cluster of real processes with a provider (served by the test, with a
// certificate minted by the cluster's CA for the provider's own identity) and a service it
// may launch, both seeded from the config.
type e2eCluster struct {
	*clustertest.Cluster
	providerURL string
}

func startE2E(t testing.TB, tune func(i int, c *controlplane.Config)) *e2eCluster {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + ln.Addr().String() + "/confirm"
	c := clustertest.Start(t, clustertest.Options{
		Providers: []controlplane.ProviderConfig{{Name: e2eProvider, DNSSuffix: e2eSuffix, ConfirmEndpoint: url}},
		Tune: func(i int, cfg *controlplane.Config) {
			cfg.Services = []controlplane.ServiceConfig{{Name: "sports.api", LaunchGrants: []string{"sys.auth.*"}}}
			if tune != nil {
				tune(i, cfg)
			}
		},
	})
	id, err := controlplane.ServiceSPIFFEID(c.TrustDomain(), e2eProvider)
	if err != nil {
		t.Fatal(err)
	}
	cert := c.IssueCert(id, clustertest.CertOptions{})
	svid := &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert.Leaf}, PrivateKey: cert.PrivateKey.(crypto.Signer)}
	serveProvider(t, ln, svid, c)
	return &e2eCluster{Cluster: c, providerURL: url}
}

// serveProvider serves a confirm endpoint that admits instances whose attestation data is
// "doc:<instance id>" and clients that are CA nodes of the cluster.
func serveProvider(t testing.TB, ln net.Listener, svid *x509svid.SVID, c *clustertest.Cluster) {
	nodes := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if id.MemberOf(c.TrustDomain()) && strings.HasPrefix(id.Path(), "/meshca/server/") {
			return nil
		}
		return errors.New("not a CA node: " + id.String())
	})
	srv := &http.Server{
		TLSConfig:         tlsconfig.MTLSServerConfig(svid, c.Bundle(), nodes),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(io.LimitReader(r.Body, confirm.MaxRequestBytes))
			req, err := confirm.DecodeRequest(body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			if string(req.AttestationData) != "doc:"+req.InstanceID {
				io.WriteString(w, `{"allowed": false, "reason": "unknown identity document"}`)
				return
			}
			io.WriteString(w, `{"allowed": true}`)
		}),
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
}

// instance is a workload instance of the e2e provider.
type instance struct {
	id    string
	key   crypto.Signer
	names policy.WorkloadNames
}

func newInstance(t testing.TB, td spiffeid.TrustDomain, id string) *instance {
	t.Helper()
	names, err := policy.WorkloadRequest{TrustDomain: td.Name(), Domain: "sports", Service: "api", ProviderDNSSuffix: e2eSuffix, InstanceID: id}.Names()
	if err != nil {
		t.Fatal(err)
	}
	return &instance{id: id, key: newKey(t), names: names}
}

func newKey(t testing.TB) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csr is a CSR for the instance's names with its current key.
func (in *instance) csr(t testing.TB) []byte {
	uri, _ := url.Parse(in.names.SPIFFEID.String())
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: in.names.CommonName},
		DNSNames: []string{in.names.ServiceDNS, in.names.InstanceDNS},
		URIs:     []*url.URL{uri},
	}, in.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func (in *instance) registerReq(t testing.TB) *meshcav1.RegisterRequest {
	return &meshcav1.RegisterRequest{Provider: e2eProvider, Domain: "sports", Service: "api", Csr: in.csr(t), AttestationData: []byte("doc:" + in.id)}
}

// tlsCert pairs an issued certificate with the instance's current key.
func (in *instance) tlsCert(t testing.TB, resp *meshcav1.IdentityResponse) *tls.Certificate {
	der, err := x509.MarshalPKCS8PrivateKey(in.key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair([]byte(resp.GetCertificate()+resp.GetChain()), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return &c
}
