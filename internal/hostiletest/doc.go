// Package hostiletest attacks a running meshca cluster of real processes with malformed and
// hostile input at every edge (the gRPC port, the HTTPS port, the cluster port) and checks
// that each attack gets a clear refusal, that the attacked node keeps running and serving
// other clients, and that it does not keep goroutines or memory for the attacker. It holds
// tests only.
package hostiletest
