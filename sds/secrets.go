package sds

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/anypb"
)

// The fixed SDS resource names (see the package documentation for the others).
const (
	// NameDefault is the caller's certificate chain and key.
	NameDefault = "default"
	// NameRootCA is the caller's own trust bundle.
	NameRootCA = "ROOTCA"
	// NameAll is a SPIFFE validator config with every trusted and federated bundle.
	NameAll = "ALL"
	// NameIssuerNotice is a CA node's meshca.v1.IssuerNotice for agents, a generic secret.
	NameIssuerNotice = "meshca-issuer"
)

// SPIFFEValidatorName is the Envoy extension name of the SPIFFE certificate validator used by
// the "ALL" resource.
const SPIFFEValidatorName = "envoy.tls.cert_validator.spiffe"

// expected reports whether name is one the caller will be served as soon as the agent has it:
// such a name holds the answer while it is missing. Any other name is unknown to this caller.
func expected(id spiffeid.ID, name string) bool {
	switch name {
	case NameDefault, NameRootCA, NameAll, id.String(), id.TrustDomain().IDString():
		return true
	}
	return false
}

// answerable decides whether a subscription of caller id to names may be answered now, given
// which names exist (present) and which were already sent on this stream (returned). It is the
// rule that keeps Envoy from seeing an empty or partial answer:
//   - a wildcard subscription (no names) is answered once anything exists;
//   - a subscription naming an expected name that is still missing is held;
//   - a subscription naming only unknown names is held (an empty SotW answer would read as
//     "remove"), unless one of them was sent before: then the answer tells the client it is gone.
func answerable(id spiffeid.ID, names []string, present func(string) bool, haveAny bool, returned map[string]string) bool {
	if len(names) == 0 {
		return haveAny
	}
	some := false
	for _, n := range names {
		if present(n) {
			some = true
			continue
		}
		if expected(id, n) {
			return false
		}
		if _, ok := returned[n]; ok {
			some = true
		}
	}
	return some
}

// secretsFor builds the Envoy secrets a View is served as, keyed by resource name.
func secretsFor(v View) (map[string]*tlsv3.Secret, error) {
	out := make(map[string]*tlsv3.Secret)
	if v.SVID != nil {
		chain, key, err := v.SVID.Marshal()
		if err != nil {
			return nil, fmt.Errorf("svid %q: encoding: %w", v.ID, err)
		}
		for _, name := range []string{NameDefault, v.ID.String()} {
			out[name] = &tlsv3.Secret{
				Name: name,
				Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
					CertificateChain: inline(chain),
					PrivateKey:       inline(key),
				}},
			}
		}
	}
	for name, data := range v.Generic {
		out[name] = &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{Secret: inline(data)}}}
	}
	bundles := v.AllBundles()
	if len(bundles) == 0 {
		return out, nil
	}
	spiffe := &tlsv3.SPIFFECertValidatorConfig{}
	for _, b := range bundles {
		roots := pemCerts(b.X509Authorities())
		name := b.TrustDomain().IDString()
		out[name] = validationSecret(name, roots)
		if b.TrustDomain() == v.ID.TrustDomain() {
			out[NameRootCA] = validationSecret(NameRootCA, roots)
		}
		spiffe.TrustDomains = append(spiffe.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name:        b.TrustDomain().Name(),
			TrustBundle: inline(roots),
		})
	}
	if _, ok := out[NameRootCA]; ok {
		cfg, err := anypb.New(spiffe)
		if err != nil {
			return nil, fmt.Errorf("%s: encoding SPIFFE validator config: %w", NameAll, err)
		}
		out[NameAll] = &tlsv3.Secret{
			Name: NameAll,
			Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				CustomValidatorConfig: &core.TypedExtensionConfig{Name: SPIFFEValidatorName, TypedConfig: cfg},
			}},
		}
	}
	return out, nil
}

func resourcesOf(secrets map[string]*tlsv3.Secret) []types.Resource {
	out := make([]types.Resource, 0, len(secrets))
	for _, s := range secrets {
		out = append(out, s)
	}
	return out
}

func validationSecret(name string, roots []byte) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(roots),
		}},
	}
}

func inline(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
}

func pemCerts(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

func derCerts(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		buf.Write(c.Raw)
	}
	return buf.Bytes()
}
