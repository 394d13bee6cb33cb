#!/usr/bin/env bash
# make bench: every scenario of the measured targets in one bounded run (about 10 minutes on
# 2 cores), written to bench/results.json with a table and the ratio to the committed results.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
# The SoftHSM2 scenarios are part of the results: without SoftHSM2 they fail rather than skip,
# so a run never writes results.json without them. MESHCA_REQUIRE_SOFTHSM= make bench opts out.
export MESHCA_REQUIRE_SOFTHSM=${MESHCA_REQUIRE_SOFTHSM-1}
out=bench/last-run.txt
: > "$out"
run() { # run PKG PATTERN BENCHTIME
  echo "== $1 $2" >&2
  $GO test -run '^$' -bench "$2" -benchtime "$3" -count 1 -timeout 15m "$1" | tee -a "$out"
}
# (a) crypto floor and issuance: stdlib CSR verify + sign beside our path, software and SoftHSM2.
run ./ca 'BenchmarkIssueVsFloor|BenchmarkIssue$|BenchmarkIssueSoftHSM|BenchmarkCRL100k' 1s
run ./ca/signer 'BenchmarkPKCS11P256|BenchmarkSoftwareSign' 1s
# (b) Register and Refresh through a 3-node cluster of real processes, fsync on; (c) the same
# with the CA key on a SoftHSM2 token (BenchmarkClusterSoftHSM).
run ./controlplane 'BenchmarkCluster$|BenchmarkClusterSoftHSM$' 1s
# Raft: our store against raw hashicorp/raft with the same log store; 1,000,000 instances.
run ./raftstore 'BenchmarkPropose' 6000x
run ./raftstore 'BenchmarkSnapshotMillionInstances' 1x
run ./raftstore 'BenchmarkApplyBatchSteadyState' 30000x
# (d) bundle change to N open SDS streams; and through the agent to an Envoy-like stream.
run ./sds 'BenchmarkSDSFanout' 1x
run ./sds/agent 'BenchmarkBundleChangeReachesEnvoy' 1s
# Log stores compared with our command mix (own module: raft-boltdb/v2 needs raft v1.7.3).
echo "== bench/logstores" >&2
(cd bench/logstores && $GO test -run '^$' -bench . -benchtime 1s -count 1 .) | sed 's#^pkg: .*#pkg: github.com/meshca/meshca/bench/logstores#' | tee -a "$out"
$GO run ./bench/report -out bench/results.json < "$out"
