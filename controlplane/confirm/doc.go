// Package confirm is the wire format and the client of a provider's confirm endpoint: the
// callback a CA node makes, over mutual TLS, to ask the provider that launched an instance
// whether the instance may have the identity it asks for (Athenz Copper Argos).
//
// The CA POSTs a JSON Request to the provider's confirm URL, presenting its node certificate
// as the client certificate. The provider's server certificate must chain to the CA's own
// trust bundle and carry the provider's service identity as its SPIFFE ID
// (spiffe://<trust-domain>/ns/<provider-domain>/sa/<provider-service>): a provider proves who it
// is with a certificate this CA issued to it. The provider answers a JSON Response:
//
//	{"allowed": true, "reason": "", "ttl_seconds": 3600}
//
// Both directions are decoded strictly: unknown or duplicated keys, wrong types and trailing
// data are errors that name the key. Providers use DecodeRequest; the CA uses DecodeResponse.
package confirm
