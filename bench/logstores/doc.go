// Package logstores compares the two Raft log stores DESIGN.md names, raft-wal and
// raft-boltdb/v2, under meshca's issuance command mix: commits per second and latency on a
// three-node hashicorp/raft cluster on 127.0.0.1 with fsync on and a no-op state machine.
//
// It is its own module because raft-boltdb/v2 v2.3.1 imports go-metrics/compat, which the
// go-metrics that raft v1.8.0 requires no longer has; here both stores run under raft v1.7.3.
// The command mix comes from testdata/issuance-mix.bin, written by
// `go run ./raftstore/internal/mixgen -o bench/logstores/testdata/issuance-mix.bin` in the main
// module. Run it with `go test -run '^$' -bench . -benchtime 1s` in this folder.
package logstores
