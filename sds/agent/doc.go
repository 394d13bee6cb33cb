// Package agent is meshca-agent, the node agent beside the workloads of one host. It keeps one
// X.509 certificate per configured workload identity and the cluster's trust bundles, and hands
// them to Envoy (SDS v3), to go-spiffe clients (the SPIFFE Workload API) and to workloads that
// read files, through package sds.
//
// # Certificates
//
// Keys are generated on the host (ECDSA P-256 unless key_type says otherwise) and never leave
// it: the CA gets a CSR built from the same names its policy demands (ca/policy
// WorkloadRequest.Names). The first certificate comes from Identity.Register with the identity's
// attestation: a provider's identity document (a file, or a command's standard output), a
// service key token signed with the service's key (see ServiceTokenClaims), or a one-time
// register token. After that the agent calls Identity.Refresh over mutual TLS, presenting the
// certificate being replaced, with a new key every time, at refresh.fraction of the remaining
// lifetime moved by up to ±refresh.jitter of it. A failed attempt is retried sooner, with
// exponential backoff, on the next CA node.
//
// The current certificate, its key and serial are kept in state_dir (0700; one file per
// identity, 0600, replaced atomically), so a restart serves it at once and refreshes it
// instead of registering again. A certificate that expired while the agent was away, or that
// the CA no longer accepts as a credential, leads to a new registration. When the CA refuses a
// refresh with PermissionDenied (the serial was superseded — someone else refreshed with this
// instance's certificate — or the instance is revoked), the agent logs it as an error, stops
// serving the certificate and registers again if its attestation can: a register token works
// once, so then the identity stays empty until a new token is put in the file.
//
// # Trust bundles
//
// The agent starts from trust_bundle and then streams the bundles from a CA node over mutual
// TLS SDS v3 (state of the world), subscribed to ROOTCA (its own bundle) and ALL (every trusted
// and federated bundle by trust domain). Each response is applied to the store and
// acknowledged; one that does not decode is rejected (NACK) and changes nothing. A federated
// trust domain that leaves ALL is removed. Changes reach the agent's own SDS streams at once:
// nothing is polled. When a stream ends the agent moves to the next CA node.
//
// # Serving
//
// SDS and the Workload API are served on sds_socket and workload_api_socket, where callers are
// mapped to identities by their Unix peer credentials (uids, gids), and on each identity's own
// socket, bound to that identity. A caller that maps to nothing gets nothing. The admin socket
// serves the inventory (GET /v1/secrets, for meshctl agent secrets), /metrics, /healthz and
// /readyz.
//
// Time comes from an injected Clock, so tests move it instead of waiting for rotations.
package agent
