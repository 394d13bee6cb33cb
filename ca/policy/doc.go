// Package policy decides what a certificate may contain. It is pure: every function takes the
// parsed CSR, a request value and the issuer certificate and returns a certificate template or
// the list of rules the request breaks. Nothing here reads a clock, draws randomness, touches
// the network or keeps global state, so the same decision can run on any node and inside a
// replicated log's Apply.
//
// Two kinds of request are decided here:
//
//   - A workload certificate (CheckWorkload): the identity is <domain>.<service> in a trust
//     domain, launched by a provider with a DNS suffix, on an instance with an id. The CSR must
//     name exactly that identity and nothing else.
//   - A manually approved certificate from a GitOps spec (CheckSpec): a tls.json entry names
//     the common name, DNS SANs, purposes, lifetime and subject overrides.
//
// Every refusal is a Violation that names the field and the rule it breaks, and wraps a
// sentinel error (ErrSANNotAllowed, ErrKeyNotAllowed, ...) callers can branch on with
// errors.Is.
package policy
