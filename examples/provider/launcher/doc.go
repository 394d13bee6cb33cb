// Package launcher is the library of the example provider (examples/provider): a small
// launcher service, in the role a Kubernetes control plane or a cloud's instance service plays
// in Athenz Copper Argos. It hands each instance it launches a signed identity document and,
// when a CA node asks, confirms over mutual TLS that an instance may have the identity it
// requests.
//
// The identity document is a JWT signed with ES256 (go-jose) by the provider's document key.
// Its claims are the provider as issuer ("iss"), the cluster's trust domain as audience
// ("aud"), the identity's domain and service, the instance id, and issue and expiry times.
// The instance passes it, opaque, as the attestation data of its Register (and Refresh)
// request; the CA passes it on to the provider's confirm endpoint with the instance attributes
// it read from the CSR.
//
// The confirm endpoint (Handler) reads the CA's request in the format of
// controlplane/confirm, verifies the document (signature, issuer, audience, expiry) and that
// its domain, service and instance id are the request's, and answers allowed true or false
// with the reason. Decide is that decision as a pure function of the request, the verifier and
// the time.
//
// The endpoint is served with a server certificate the provider got from meshca for its own
// service identity (e.g. sys.auth.example): FileSource reads it, its key and the trust bundle
// from files and follows them when they are replaced, so whoever renews them needs no restart
// of the provider. In `meshctl dev` that is the node agent: it registers the provider's
// identity once with a one-time register token (the built-in provider sys.auth.meshca
// confirms it), writes the certificate files, and refreshes them at half their life.
// ServerTLSConfig admits only clients that prove they are CA nodes of the trust domain.
//
// OpsHandler serves the provider's /metrics (meshca_provider_confirmations_total), /healthz
// and /readyz (a valid certificate and a bundle are loaded) for a loopback operations port.
package launcher
