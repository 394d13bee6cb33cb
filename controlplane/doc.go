// Package controlplane is meshca-server: it wires the CA engine (ca) and the replicated state
// (raftstore) to the network — the identity API where workloads prove who they are, the admin
// API, provider callbacks, the extend API and the HTTP endpoints.
//
// # A node
//
// New builds a Server from a Config and Run serves it (cmd/meshca-server only parses flags,
// loads the config and calls Run). At start a node reads or generates its CA material
// (self-signed root in ca.dir, Istio cacerts, or a PKCS#11 key), signs its own short-lived
// certificate (spiffe://<td>/meshca/server/<node-id>) and starts its Raft node. The leader of
// a new cluster seeds the configured providers and services and proposes its CA as the
// cluster's CA record; from then on every node builds its Authority from that replicated
// record, so a rotation (a log command) switches every node.
//
// listen.grpc serves meshca.v1.Identity, the admin API and the bundle SDS to agents, over
// TLS with a client certificate asked for but verified per call (Authenticate). listen.http
// serves /metrics, /healthz, /readyz, /crl and the SPIFFE bundle endpoint /bundle, and
// whatever other flows mount on HTTPMux.
//
// # Errors
//
// Every refusal names the field and the rule ("csr: DNS SAN \"x.evil.com\" is outside
// provider suffix \"k8s.mesh.example\"") and wraps a sentinel of this package, raftstore,
// ca or policy. StatusOf is the one mapping from those sentinels to gRPC codes; the gRPC
// server's interceptors apply it to every method.
//
// # Adding a flow
//
// A flow (the admin API, the built-in provider sys.auth.meshca and its register tokens,
// service key tokens, the extend API) lives in its own files and adds one line to flows in
// server.go. Its function receives the Server before Run and may:
//   - register gRPC services on GRPCServer and mount HTTP handlers on HTTPMux;
//   - authenticate callers with Authenticate (gRPC) or AuthenticateTLS (HTTP);
//   - confirm a built-in provider's instances locally with SetConfirmer (a Confirmation may
//     name a register token the registration consumes in the same log entry);
//   - take Register calls that carry a service_token with SetServiceTokenRegister;
//   - issue through the register and refresh cores (refresh with RefreshOptions.Extend is
//     the extend API's "extend"), commit commands with Apply, read Store and Authority;
//   - end its own streams at shutdown with OnStop.
package controlplane
