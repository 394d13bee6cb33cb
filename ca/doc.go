// Package ca is meshca's certificate authority engine: it bootstraps or loads the issuing CA,
// issues workload and GitOps certificates under the policy of package policy, and produces
// trust bundles and CRLs. It knows nothing about Raft or the network: callers supply the time,
// serial numbers and CRL numbers, so the values that must agree across a cluster are decided
// by whoever replicates them.
//
// An Issuer is a CA certificate with its key (a signer.Signer: software or PKCS#11) and the
// certificates above it. NewSelfSigned makes a root (and optionally an intermediate) at first
// start, as istiod does; LoadCACerts reads an Istio "cacerts" folder and validates it before
// use. An Authority signs with one Issuer: IssueWorkload and IssueSpec return the leaf and
// its chain (leaf and intermediates; roots travel only in the trust bundle).
package ca
