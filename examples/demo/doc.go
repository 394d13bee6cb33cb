// Package demo is the code of the two demo workloads, examples/demo-server and
// examples/demo-client: plain Go programs that take their TLS material from meshca-agent, over
// SDS (go-control-plane's client types against the agent's Unix socket, subscribed to "default"
// and "ROOTCA") or over the SPIFFE Workload API (go-spiffe's workloadapi.X509Source), and keep
// doing mutual TLS requests to each other while the agent rotates their certificates.
//
// Every handshake reads the latest material (go-spiffe's tlsconfig: GetCertificate,
// GetClientCertificate and VerifyPeerCertificate over a source that is replaced on every
// push), so a rotation needs no restart. The client opens a new connection for every request,
// so each request is a handshake with whatever the agent serves at that moment. Both check the
// peer's SPIFFE ID, log each rotation and every failed handshake, and count requests, failures
// and rotations in Stats, served as JSON on a loopback /stats endpoint for tests and operators.
package demo
