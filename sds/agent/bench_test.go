package agent

import (
	"slices"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	"github.com/meshca/meshca/sds"
)

// BenchmarkBundleChangeReachesEnvoy measures the push path a CA rotation takes: a bundle change
// on a CA node's SDS, streamed over mutual TLS to the agent, applied to its store, and pushed to
// an Envoy-like SDS stream on the agent's Unix socket. Each iteration flips the bundle between
// one and two roots and waits for Envoy's stream to show it. Nothing polls.
func BenchmarkBundleChangeReachesEnvoy(b *testing.B) {
	bt := b
	cluster := newTestCluster(bt, time.Now, 1)
	cfg := testConfig(bt, cluster, shortDir(bt))
	a := startAgent(bt, cfg, nil)
	poll(bt, "the bundle stream", func() bool { return a.agent.streamed.Load() })
	e := openEnvoy(bt, cfg.SDSSocket, sds.NameRootCA)
	e.recv()

	one := cluster.authority.Bundle()
	two := cluster.publishRoot(cluster.newRoot())
	e.recvUntil("two roots", func(m map[string]*tlsv3.Secret) bool { return len(rootsOf(bt, m[sds.NameRootCA])) == 2 })
	bundles := []*x509bundle.Bundle{one, two}

	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		next := bundles[i%2]
		start := time.Now()
		if err := cluster.bundles.SetBundle(next); err != nil {
			b.Fatal(err)
		}
		want := len(next.X509Authorities())
		e.recvUntil("the changed bundle", func(m map[string]*tlsv3.Secret) bool {
			return m[sds.NameRootCA] != nil && len(rootsOf(bt, m[sds.NameRootCA])) == want
		})
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
