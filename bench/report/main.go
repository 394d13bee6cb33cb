// Command report turns `go test -bench` output into bench/results.json and a short table, and
// prints each figure's ratio to the results committed before, so a change that slows meshca
// down shows up in the same run that measured it.
//
// Usage: go test -run '^$' -bench . ./... | go run ./bench/report -out bench/results.json
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is one benchmark scenario.
type Result struct {
	// Name is the benchmark's name without the -GOMAXPROCS suffix, e.g.
	// "raftstore/BenchmarkPropose/leader/c=64".
	Name string `json:"name"`
	// Parameters are the key=value parts of the sub-benchmark names.
	Parameters map[string]string `json:"parameters,omitempty"`
	// Iterations is b.N.
	Iterations int64 `json:"iterations"`
	// OpsPerSec is the throughput: a reported */s metric, or 1e9 / ns/op.
	OpsPerSec float64 `json:"ops_per_sec,omitempty"`
	// P50Ms and P99Ms are latency percentiles, when the benchmark reports them.
	P50Ms float64 `json:"p50_ms,omitempty"`
	P99Ms float64 `json:"p99_ms,omitempty"`
	// RSS is a memory figure the benchmark reports (its unit is in RSSUnit).
	RSS     float64 `json:"rss,omitempty"`
	RSSUnit string  `json:"rss_unit,omitempty"`
	// Metrics holds every figure as reported, by unit.
	Metrics map[string]float64 `json:"metrics"`
}

// Machine describes where the figures were measured.
type Machine struct {
	GOOS      string `json:"goos"`
	GOARCH    string `json:"goarch"`
	CPU       string `json:"cpu,omitempty"`
	NumCPU    int    `json:"num_cpu"`
	GoVersion string `json:"go_version"`
	Commit    string `json:"commit,omitempty"`
	Date      string `json:"date"`
}

// File is bench/results.json.
type File struct {
	Machine Machine  `json:"machine"`
	Results []Result `json:"results"`
}

func main() {
	out := flag.String("out", "bench/results.json", "where to write the results")
	prev := flag.String("previous", "", "results to compare with (default: the committed version of -out)")
	flag.Parse()
	if err := run(os.Stdin, os.Stdout, *out, *prev); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, w io.Writer, out, prevPath string) error {
	f, err := parse(in)
	if err != nil {
		return err
	}
	if len(f.Results) == 0 {
		return errors.New("no benchmark results in the input")
	}
	f.Machine.GOOS, f.Machine.GOARCH = runtime.GOOS, runtime.GOARCH
	f.Machine.NumCPU = runtime.NumCPU()
	f.Machine.GoVersion = runtime.Version()
	f.Machine.Date = time.Now().UTC().Format(time.RFC3339)
	if c, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		f.Machine.Commit = strings.TrimSpace(string(c))
	}
	previous := loadPrevious(out, prevPath)
	printTable(w, f, previous)
	js, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(out, append(js, '\n'), 0o644)
}

// parse reads `go test -bench` output: "pkg:" lines name the package, "cpu:" the processor,
// and each "Benchmark..." line a result with its metrics as value/unit pairs.
func parse(in io.Reader) (*File, error) {
	f := &File{}
	pkg := ""
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "pkg: "):
			pkg = strings.TrimPrefix(strings.TrimPrefix(line, "pkg: "), "github.com/meshca/meshca/")
		case strings.HasPrefix(line, "cpu: "):
			f.Machine.CPU = strings.TrimPrefix(line, "cpu: ")
		case strings.HasPrefix(line, "Benchmark"):
			if r, ok := parseLine(pkg, line); ok {
				f.Results = append(f.Results, r)
			}
		}
	}
	return f, sc.Err()
}

func parseLine(pkg, line string) (Result, bool) {
	fields := strings.Fields(line)
	if len(fields) < 4 || len(fields)%2 != 0 {
		return Result{}, false
	}
	n, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		return Result{}, false
	}
	name := fields[0]
	if i := strings.LastIndex(name, "-"); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			name = name[:i]
		}
	}
	r := Result{Name: pkg + "/" + name, Iterations: n, Metrics: map[string]float64{}}
	for _, part := range strings.Split(name, "/")[1:] {
		if k, v, ok := strings.Cut(part, "="); ok {
			if r.Parameters == nil {
				r.Parameters = map[string]string{}
			}
			r.Parameters[k] = v
		}
	}
	for i := 2; i+1 < len(fields); i += 2 {
		v, err := strconv.ParseFloat(fields[i], 64)
		if err != nil {
			return Result{}, false
		}
		r.Metrics[fields[i+1]] = v
	}
	derive(&r)
	return r, true
}

// derive fills the common columns from whatever units the benchmark reported.
func derive(r *Result) {
	units := make([]string, 0, len(r.Metrics))
	for u := range r.Metrics {
		units = append(units, u)
	}
	sort.Strings(units)
	for _, u := range units {
		v := r.Metrics[u]
		lu := strings.ToLower(u)
		switch {
		case strings.HasSuffix(lu, "/s") && r.OpsPerSec == 0:
			r.OpsPerSec = v
		case strings.Contains(lu, "p50") && r.P50Ms == 0:
			r.P50Ms = toMs(lu, v)
		case strings.Contains(lu, "p99") && r.P99Ms == 0:
			r.P99Ms = toMs(lu, v)
		}
		// The server's memory is the figure targets speak of; a client's is context only.
		if rank := memoryRank(lu); rank > 0 && rank > memoryRank(strings.ToLower(r.RSSUnit)) {
			r.RSS, r.RSSUnit = v, u
		}
	}
	if ns, ok := r.Metrics["ns/op"]; ok && r.OpsPerSec == 0 && ns > 0 {
		r.OpsPerSec = 1e9 / ns
	}
}

// memoryRank orders memory units by how well they speak for the server: 0 is not memory.
func memoryRank(unit string) int {
	switch {
	case strings.Contains(unit, "server") && (strings.Contains(unit, "kb") || strings.Contains(unit, "rss")):
		return 3
	case strings.Contains(unit, "rss"):
		return 2
	case strings.Contains(unit, "kb/stream"):
		return 1
	}
	return 0
}

func toMs(unit string, v float64) float64 {
	switch {
	case strings.HasSuffix(unit, "-us") || strings.HasSuffix(unit, "µs"):
		return v / 1000
	case strings.HasSuffix(unit, "-s"):
		return v * 1000
	}
	return v
}

func loadPrevious(out, prevPath string) map[string]Result {
	var raw []byte
	var err error
	if prevPath != "" {
		raw, err = os.ReadFile(prevPath)
	} else {
		raw, err = exec.Command("git", "show", "HEAD:"+out).Output()
	}
	if err != nil {
		return nil
	}
	var f File
	if json.Unmarshal(raw, &f) != nil {
		return nil
	}
	m := make(map[string]Result, len(f.Results))
	for _, r := range f.Results {
		m[r.Name] = r
	}
	return m
}

func printTable(w io.Writer, f *File, previous map[string]Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "scenario\tops/s\tp50 ms\tp99 ms\tRSS\tvs committed\n")
	for _, r := range f.Results {
		ratio := "-"
		if p, ok := previous[r.Name]; ok && p.OpsPerSec > 0 && r.OpsPerSec > 0 {
			ratio = fmt.Sprintf("%.2fx ops/s", r.OpsPerSec/p.OpsPerSec)
		}
		rss := "-"
		if r.RSSUnit != "" {
			rss = fmt.Sprintf("%.1f %s", r.RSS, r.RSSUnit)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, num(r.OpsPerSec), num(r.P50Ms), num(r.P99Ms), rss, ratio)
	}
	tw.Flush()
	printTargets(w, f)
	fmt.Fprintf(w, "\nmachine: %s/%s, %d cores, %s, %s\n", f.Machine.GOOS, f.Machine.GOARCH, f.Machine.NumCPU, f.Machine.CPU, f.Machine.GoVersion)
}

// Issue 8's target (b): Register at concurrency 64 through the cluster reaches at least half
// the crypto floor's rate (one core verifying a CSR and signing, in-process).
const (
	floorName     = "controlplane/BenchmarkCluster/crypto_floor/P-256"
	registerGoal  = 0.5
	registerConc  = "64"
	registerScene = "register"
)

// printTargets prints each cluster Register at c=64 as a share of the crypto floor.
func printTargets(w io.Writer, f *File) {
	var floor float64
	for _, r := range f.Results {
		if r.Name == floorName {
			floor = r.OpsPerSec
		}
	}
	if floor == 0 {
		return
	}
	fmt.Fprintf(w, "\ntarget (b): Register at c=%s >= %.0f%% of the crypto floor (%s/s)\n", registerConc, registerGoal*100, num(floor))
	for _, r := range f.Results {
		if r.Parameters["conc"] != registerConc || !strings.Contains(r.Name, "/"+registerScene+"/") || r.OpsPerSec == 0 {
			continue
		}
		verdict := "met"
		if r.OpsPerSec < registerGoal*floor {
			verdict = "MISSED"
		}
		fmt.Fprintf(w, "  %s: %s/s = %.0f%% %s\n", r.Name, num(r.OpsPerSec), 100*r.OpsPerSec/floor, verdict)
	}
}

func num(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}
