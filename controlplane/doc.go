// Package controlplane is meshca-server: it wires the CA engine (ca) and the replicated state
// (raftstore) to the network — the identity API where workloads prove who they are, the admin
// API, provider callbacks, the extend API and the HTTP endpoints.
package controlplane
