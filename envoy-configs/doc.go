// Package envoyconfigs holds the Envoy v3 bootstraps for a sidecar that takes its certificate
// and trust bundles over SDS from meshca-agent. The YAML files are the product; the test in
// this package checks each against the Envoy protos.
package envoyconfigs
