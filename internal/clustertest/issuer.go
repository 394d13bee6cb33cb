package clustertest

import "github.com/meshca/meshca/ca"

// UseIssuer makes the cluster's CA (CA, Issuer, IssueCert, Bundle, AdminCert) sign with iss
// instead of opening the self-signed CA directory with the KEK: for a cluster whose CA key is
// on a PKCS#11 token that the test opens itself. Call it before anything uses the CA.
func (c *Cluster) UseIssuer(iss *ca.Issuer) {
	c.t.Helper()
	set := false
	c.caOnce.Do(func() { c.ca, set = &CA{td: c.td, issuer: iss}, true })
	if !set {
		c.t.Fatal("clustertest: UseIssuer after the cluster's CA was opened")
	}
}
