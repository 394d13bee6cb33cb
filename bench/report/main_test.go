package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `goos: linux
goarch: amd64
pkg: github.com/meshca/meshca/raftstore
cpu: Example CPU @ 2.00GHz
BenchmarkPropose/leader/c=64-2         	    5000	    200000 ns/op	   4800 cmds/s	  1.5 p50-ms	  9.25 p99-ms
BenchmarkSnapshotMillionInstances-2    	       1	3000000000 ns/op	  512.0 vmrss_MiB	 2.1 snapshot_s
BenchmarkSDSFanout/streams=1000-2      	       1	3000000000 ns/op	  16.2 client-KB/stream	 19.8 server-KB/stream
pkg: github.com/meshca/meshca/ca
BenchmarkIssue/p256/serial-2           	   10000	    250000 ns/op	    5000 B/op	      60 allocs/op
PASS
`

func TestReportWritesResultsAndComparesWithPrevious(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "results.json")
	prev := filepath.Join(dir, "prev.json")
	old := File{Results: []Result{{Name: "raftstore/BenchmarkPropose/leader/c=64", OpsPerSec: 2400}}}
	raw, _ := json.Marshal(old)
	if err := os.WriteFile(prev, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := run(strings.NewReader(sample), &table, out, prev); err != nil {
		t.Fatal(err)
	}
	var f File
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Results) != 4 {
		t.Fatalf("results = %d, want 4", len(f.Results))
	}
	if s := f.Results[2]; s.RSS != 19.8 || s.RSSUnit != "server-KB/stream" {
		t.Errorf("the server's memory must win over the client's: %v %q", s.RSS, s.RSSUnit)
	}
	p := f.Results[0]
	if p.Name != "raftstore/BenchmarkPropose/leader/c=64" || p.Parameters["c"] != "64" {
		t.Errorf("name/params = %q %v", p.Name, p.Parameters)
	}
	if p.OpsPerSec != 4800 || p.P50Ms != 1.5 || p.P99Ms != 9.25 {
		t.Errorf("ops/p50/p99 = %v %v %v", p.OpsPerSec, p.P50Ms, p.P99Ms)
	}
	if s := f.Results[1]; s.RSS != 512 || s.RSSUnit != "vmrss_MiB" {
		t.Errorf("rss = %v %q", s.RSS, s.RSSUnit)
	}
	if i := f.Results[3]; i.OpsPerSec != 4000 {
		t.Errorf("ops/s from ns/op = %v, want 4000", i.OpsPerSec)
	}
	if f.Machine.CPU != "Example CPU @ 2.00GHz" || f.Machine.NumCPU == 0 {
		t.Errorf("machine = %+v", f.Machine)
	}
	if !strings.Contains(table.String(), "2.00x ops/s") {
		t.Errorf("table lacks the ratio to the previous run:\n%s", table.String())
	}
}

func TestReportRefusesEmptyInput(t *testing.T) {
	if err := run(strings.NewReader("PASS\n"), &bytes.Buffer{}, filepath.Join(t.TempDir(), "r.json"), ""); err == nil {
		t.Fatal("an input without results must be an error, or make bench could write an empty file")
	}
}

func TestReportReadsClusterScenariosWithTheirCPUTime(t *testing.T) {
	const in = `pkg: github.com/meshca/meshca/controlplane
BenchmarkCluster/crypto_floor/P-256-2                        	    5000	    219000 ns/op	      4554 calls/s	       220.5 cpu-us/call
BenchmarkClusterSoftHSM/register/via=leader/conc=64-2        	    2281	    457383 ns/op	      2186 calls/s	       626.9 leader-cpu-us/call	        28.52 p50-ms	        53.16 p99-ms	       727.8 servers-cpu-us/call
`
	f, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Results) != 2 {
		t.Fatalf("results = %d, want 2", len(f.Results))
	}
	if fl := f.Results[0]; fl.OpsPerSec != 4554 || fl.Metrics["cpu-us/call"] != 220.5 {
		t.Errorf("floor: ops/s %v, cpu %v; want 4554 and 220.5", fl.OpsPerSec, fl.Metrics["cpu-us/call"])
	}
	r := f.Results[1]
	if r.Name != "controlplane/BenchmarkClusterSoftHSM/register/via=leader/conc=64" || r.Parameters["via"] != "leader" || r.Parameters["conc"] != "64" {
		t.Errorf("name/params = %q %v", r.Name, r.Parameters)
	}
	// CPU time per call is neither the throughput nor a memory figure.
	if r.OpsPerSec != 2186 || r.P50Ms != 28.52 || r.P99Ms != 53.16 || r.RSSUnit != "" {
		t.Errorf("ops/p50/p99/rss = %v %v %v %q", r.OpsPerSec, r.P50Ms, r.P99Ms, r.RSSUnit)
	}
	if r.Metrics["leader-cpu-us/call"] != 626.9 || r.Metrics["servers-cpu-us/call"] != 727.8 {
		t.Errorf("cpu metrics = %v", r.Metrics)
	}
}

func TestReportPrintsRegisterAgainstTheCryptoFloor(t *testing.T) {
	const in = `pkg: github.com/meshca/meshca/controlplane
BenchmarkCluster/crypto_floor/P-256-2                 	    5000	    219000 ns/op	      4000 calls/s
BenchmarkCluster/register/via=leader/conc=16-2        	    2000	    500000 ns/op	      1500 calls/s
BenchmarkCluster/register/via=leader/conc=64-2        	    2000	    500000 ns/op	      2400 calls/s
BenchmarkClusterSoftHSM/register/via=follower/conc=64-2	    2000	    500000 ns/op	      1800 calls/s
BenchmarkCluster/refresh/via=leader/conc=64-2         	    2000	    500000 ns/op	       600 calls/s
`
	var table bytes.Buffer
	if err := run(strings.NewReader(in), &table, filepath.Join(t.TempDir(), "r.json"), filepath.Join(t.TempDir(), "none.json")); err != nil {
		t.Fatal(err)
	}
	out := table.String()
	for _, want := range []string{
		"controlplane/BenchmarkCluster/register/via=leader/conc=64: 2400/s = 60% met",
		"controlplane/BenchmarkClusterSoftHSM/register/via=follower/conc=64: 1800/s = 45% MISSED",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q:\n%s", want, out)
		}
	}
	for _, notWanted := range []string{"conc=16:", "refresh/via=leader/conc=64:"} {
		if strings.Contains(out, notWanted) {
			t.Errorf("the targets list %q, which target (b) is not about:\n%s", notWanted, out)
		}
	}
}
