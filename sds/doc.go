// Package sds serves what a node agent holds to the workloads beside it: X.509 SVIDs (certificate
// chain and private key) and trust bundles, over three transports that share one secret source:
//
//   - the Envoy Secret Discovery Service v3 (StreamSecrets, DeltaSecrets, FetchSecrets), built on
//     go-control-plane's server and SnapshotCache;
//   - the SPIFFE Workload API (X.509 SVIDs and bundles, streaming), so go-spiffe clients work
//     unchanged;
//   - files (cert.pem, key.pem, bundle.pem) for workloads that read files.
//
// The Store is the secret source the agent feeds. Who is asking is decided per connection, never
// from what the client claims: either the Unix socket it connected to is bound to one identity, or
// its peer credentials (SO_PEERCRED uid/gid) are mapped to one by a CallerTable. A caller only ever
// receives its own identity's key.
//
// # SDS resource names
//
//   - "default": the caller's certificate chain and key, as a TlsCertificate.
//   - "ROOTCA": the caller's own trust bundle, as a CertificateValidationContext (trusted_ca).
//   - the caller's SPIFFE ID ("spiffe://td/ns/x/sa/y"): the same certificate and key as "default".
//   - "spiffe://<trust-domain>": that trust domain's bundle (own or federated) as a
//     CertificateValidationContext.
//   - "ALL": a CertificateValidationContext whose custom_validator_config is the
//     envoy.tls.cert_validator.spiffe SPIFFECertValidatorConfig with every trusted and federated
//     bundle.
//   - "meshca-issuer" (on a CA node, for agents): the active issuer and whether certificates it
//     did not sign are to be replaced at once, a meshca.v1.IssuerNotice in a generic secret.
//
// # What is answered when
//
// A subscription is answered only with the names it lists, never with anything else. An answer is
// held (the stream stays open, nothing is sent) while a name the agent will have shortly is still
// missing: "default" and the caller's SPIFFE ID before its SVID is issued, "ROOTCA", "ALL" and the
// caller's own trust domain before its bundle arrives. Envoy keeps the listener warming meanwhile,
// and gets the whole answer at once when the secret appears.
//
// A name that is none of the above (another identity's SPIFFE ID, a trust domain we do not hold, a
// misspelling) is treated as the xDS protocol treats a resource that does not exist for a
// non-wildcard type such as SDS: the server does not send it. The stream is neither closed nor
// failed; the other names on the subscription are answered normally; in SotW the response simply
// lacks the name, in Delta it is never sent (and, had it been sent before, it is listed in
// removed_resources). The client's initial_fetch_timeout decides how long it waits. If the name
// appears later (a federated trust domain is added) it is pushed like any other change. A
// subscription that names only unknown names gets no response at all, since an empty SotW answer
// would read as "remove everything".
//
// A federated bundle that is removed is removed for the client: Delta lists it in
// removed_resources; SotW sends a response without it (empty, if it was the only name).
//
// A NACK (a request carrying error_detail) is logged and counted and the stream goes on: the
// rejected version is not sent again, the next change is. Versions are "<epoch>-<n>-<m>" with a
// random epoch per Store, so an Envoy reconnecting after an agent restart with an old
// version_info and nonce never matches a current version and gets the current state and every
// later push. A Delta stream that reconnects gets every name it subscribes to again: the server
// ignores initial_resource_versions (which the protocol allows it to use, not requires).
package sds
