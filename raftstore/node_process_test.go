package raftstore

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/internal/testenv"
	"github.com/meshca/meshca/raftstore/internal/testpki"
)

// The process-level tests run raftstore/internal/raftnode as real processes on 127.0.0.1,
// each with its own data dir, kill them with SIGKILL and restart them from disk. The binary is
// built without -race (the in-process tests cover races); that keeps 10,000 fsync'd commands
// within a minute or two on two cores.

// buildRaftnode builds the node binary into the test's temp dir (the build cache makes the
// second build a link).
func buildRaftnode(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "raftnode")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(goTool, "build", "-buildvcs=false", "-o", bin, "./internal/raftnode").CombinedOutput()
	if err != nil {
		t.Fatalf("go build ./internal/raftnode: %v\n%s", err, out)
	}
	return bin
}

type procNode struct {
	t       *testing.T
	bin     string
	id      string
	dataDir string
	certs   string
	logPath string

	cluster string // cluster address, fixed after the first start
	http    string
	cmd     *exec.Cmd
	exited  chan struct{}
}

type procCluster struct {
	t     *testing.T
	nodes []*procNode
}

// newProcCluster starts n1 alone (bootstrap), then n2..nN, and joins them through n1.
func newProcCluster(t *testing.T, size int) *procCluster {
	t.Helper()
	bin := buildRaftnode(t)
	ca, err := testpki.NewCA(testTrustDomain, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	c := &procCluster{t: t}
	for i := range size {
		id := fmt.Sprintf("n%d", i+1)
		p := &procNode{t: t, bin: bin, id: id,
			dataDir: filepath.Join(root, id, "data"),
			certs:   filepath.Join(root, id, "certs"),
			logPath: filepath.Join(root, id, "node.log"),
			cluster: "127.0.0.1:0",
		}
		if err := ca.WriteNodeFiles(p.certs, id, time.Now()); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, p)
	}
	t.Cleanup(func() {
		for _, p := range c.nodes {
			p.kill()
		}
		if t.Failed() {
			for _, p := range c.nodes {
				p.dumpLog()
			}
		}
	})
	c.nodes[0].start("-bootstrap")
	c.waitLeader()
	for _, p := range c.nodes[1:] {
		p.start()
		if err := c.nodes[0].join(p.id, p.cluster); err != nil {
			t.Fatalf("join %s: %v", p.id, err)
		}
	}
	c.waitLeader()
	return c
}

func (p *procNode) start(extra ...string) {
	p.t.Helper()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	args := append([]string{"-id", p.id, "-data", p.dataDir, "-addr", p.cluster, "-certs", p.certs, "-trust-domain", testTrustDomain}, extra...)
	cmd := exec.Command(p.bin, args...)
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		p.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.cmd = cmd
	exited := make(chan struct{})
	p.exited = exited
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "READY ") {
				ready <- line
			}
		}
	}()
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	select {
	case line := <-ready:
		for _, f := range strings.Fields(line)[1:] {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "cluster":
				p.cluster = v
			case "http":
				p.http = v
			}
		}
	case <-exited:
		p.dumpLog()
		p.t.Fatalf("%s exited before it was ready: %v", p.id, cmd.ProcessState)
	case <-time.After(waitTimeout):
		p.t.Fatalf("%s not ready after %s", p.id, waitTimeout)
	}
}

func (p *procNode) running() bool {
	if p.exited == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *procNode) kill() {
	if !p.running() {
		return
	}
	p.cmd.Process.Kill()
	<-p.exited
}

// stop sends SIGTERM (a clean shutdown) and waits.
func (p *procNode) stop() {
	p.t.Helper()
	if !p.running() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(waitTimeout):
		p.t.Fatalf("%s did not stop on SIGTERM", p.id)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		p.t.Fatalf("%s exited with %d after SIGTERM", p.id, code)
	}
}

func (p *procNode) dumpLog() {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		p.t.Logf("log of %s: %v", p.id, err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	p.t.Logf("--- last log lines of %s ---\n%s", p.id, strings.Join(lines, "\n"))
}

var procHTTP = &http.Client{Timeout: 60 * time.Second}

func (p *procNode) getJSON(path string, v any) error {
	resp, err := procHTTP.Get("http://" + p.http + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

type procState struct {
	Hash         string `json:"hash"`
	AppliedIndex uint64 `json:"applied_index"`
	Domains      int    `json:"domains"`
}

func (p *procNode) state() (procState, error) {
	var s procState
	return s, p.getJSON("/state", &s)
}

func (p *procNode) status() (Status, error) {
	var s Status
	return s, p.getJSON("/status", &s)
}

func (p *procNode) join(id, addr string) error {
	resp, err := procHTTP.Post("http://"+p.http+"/join?id="+id+"&addr="+addr, "", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	return nil
}

// errProcUnavailable is a 503 from /propose: the node's Propose returned ErrUnavailable.
var errProcUnavailable = errors.New("503 unavailable")

func (p *procNode) propose(cmd *meshcav1.Command, timeout time.Duration) (*meshcav1.CommandResult, error) {
	body, err := proto.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	resp, err := procHTTP.Post(fmt.Sprintf("http://%s/propose?timeout=%s", p.http, timeout), "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		res := new(meshcav1.CommandResult)
		if err := proto.Unmarshal(b, res); err != nil {
			return nil, fmt.Errorf("decode result: %w", err)
		}
		return res, nil
	case http.StatusServiceUnavailable:
		return nil, fmt.Errorf("%w: %s", errProcUnavailable, bytes.TrimSpace(b))
	}
	return nil, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
}

func (p *procNode) missingDomains(names []string) ([]string, error) {
	resp, err := procHTTP.Post("http://"+p.http+"/missing-domains", "text/plain", strings.NewReader(strings.Join(names, "\n")))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var missing []string
	return missing, json.NewDecoder(resp.Body).Decode(&missing)
}

func (p *procNode) instance(provider, domain, service, id string) (*meshcav1.Instance, error) {
	resp, err := procHTTP.Get(fmt.Sprintf("http://%s/instance?provider=%s&domain=%s&service=%s&id=%s", p.http, provider, domain, service, id))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, b)
	}
	inst := new(meshcav1.Instance)
	return inst, protojson.Unmarshal(b, inst)
}

// waitLeader waits until every running node reports the same leader, which is running, with
// every node of the cluster in its configuration; it returns the leader.
func (c *procCluster) waitLeader() *procNode {
	c.t.Helper()
	var leader *procNode
	waitFor(c.t, "the running processes to agree on a leader", func() bool {
		leader = nil
		seen := ""
		for _, p := range c.nodes {
			if !p.running() {
				continue
			}
			st, err := p.status()
			if err != nil || st.LeaderID == "" || (seen != "" && st.LeaderID != seen) {
				return false
			}
			seen = st.LeaderID
		}
		for _, p := range c.nodes {
			if p.id == seen && p.running() {
				leader = p
			}
		}
		return leader != nil
	})
	return leader
}

// waitSameState waits until every running node has the same state hash (and, when want is
// not empty, that hash) and returns it.
func (c *procCluster) waitSameState(want string) procState {
	c.t.Helper()
	var s procState
	waitFor(c.t, "every running process to reach the same state", func() bool {
		first := true
		for _, p := range c.nodes {
			if !p.running() {
				continue
			}
			st, err := p.state()
			if err != nil || (!first && st.Hash != s.Hash) || (want != "" && st.Hash != want) {
				return false
			}
			s, first = st, false
		}
		return true
	})
	return s
}

func loadCommand(i int) *meshcav1.Command {
	return &meshcav1.Command{
		Version: CommandVersion,
		Id:      fmt.Sprintf("load-%05d", i),
		Time:    fxT0.UnixNano(),
		Command: &meshcav1.Command_PutDomain{PutDomain: &meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: fmt.Sprintf("d%05d", i)}}},
	}
}

func TestProcessClusterKeepsEveryAcknowledgedCommandThroughALeaderKillAndARestart(t *testing.T) {
	testenv.SkipIfShort(t, "starts real processes and writes 10,000 fsync'd commands")
	const total, concurrency = 10_000, 16
	c := newProcCluster(t, 3)

	// Load: 16 clients, spread over the three nodes. A client whose node is gone or answers
	// unavailable retries the same command (same id) on the next node.
	var (
		next     atomic.Int64
		acked    atomic.Int64
		half     = make(chan struct{})
		halfOnce sync.Once
		ackedIDs = make([]bool, total)
	)
	deadline := time.Now().Add(3 * time.Minute)
	var wg sync.WaitGroup
	errs := make(chan error, concurrency)
	for w := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= total {
					return
				}
				cmd := loadCommand(i)
				for attempt := 0; ; attempt++ {
					if time.Now().After(deadline) {
						errs <- fmt.Errorf("command %d not acknowledged before the test deadline", i)
						return
					}
					p := c.nodes[(w+attempt)%len(c.nodes)]
					if !p.running() {
						continue
					}
					res, err := p.propose(cmd, 10*time.Second)
					if err != nil {
						continue // node killed under us, or unavailable during the election
					}
					if res.GetCode() != meshcav1.ResultCode_RESULT_CODE_OK {
						errs <- fmt.Errorf("command %d: result %v: %s", i, res.GetCode(), res.GetMessage())
						return
					}
					ackedIDs[i] = true
					if acked.Add(1) == total/2 {
						halfOnce.Do(func() { close(half) })
					}
					break
				}
			}
		}()
	}

	select {
	case <-half:
	case <-time.After(3 * time.Minute):
		t.Fatal("half the commands were not acknowledged in time")
	}
	leader := c.waitLeader()
	leader.kill()
	killed := time.Now()
	t.Logf("SIGKILLed leader %s after %d acknowledged commands", leader.id, acked.Load())
	newLeader := c.waitLeader()
	t.Logf("new leader %s known to the survivors %s after the kill (detection + election, under load)", newLeader.id, time.Since(killed).Round(time.Millisecond))

	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d commands acknowledged", acked.Load())
	if got := acked.Load(); got != total {
		t.Fatalf("%d of %d commands acknowledged", got, total)
	}

	// The killed leader comes back from its data dir and catches up.
	leader.start()
	before := c.waitSameState("")
	names := make([]string, 0, total)
	for i, ok := range ackedIDs {
		if ok {
			names = append(names, fmt.Sprintf("d%05d", i))
		}
	}
	for _, p := range c.nodes {
		missing, err := p.missingDomains(names)
		if err != nil {
			t.Fatal(err)
		}
		if len(missing) > 0 {
			t.Fatalf("%s misses %d acknowledged commands, e.g. %v", p.id, len(missing), missing[:min(5, len(missing))])
		}
	}
	t.Logf("every node holds all %d acknowledged commands; state hash %s", len(names), before.Hash)

	// A clean stop of all three and a start from disk: the same state.
	for _, p := range c.nodes {
		p.stop()
	}
	for _, p := range c.nodes {
		p.start()
	}
	c.waitLeader()
	after := c.waitSameState(before.Hash)
	if after.Domains != total {
		t.Fatalf("after restart %d domains, want %d", after.Domains, total)
	}

	// Two of three gone: a write on the survivor fails unavailable within its timeout and
	// nothing is applied.
	survivor := c.nodes[2]
	c.nodes[0].kill()
	c.nodes[1].kill()
	const timeout = 3 * time.Second
	start := time.Now()
	res, err := survivor.propose(loadCommand(total), timeout)
	elapsed := time.Since(start)
	if !errors.Is(err, errProcUnavailable) || !strings.Contains(err.Error(), "unavailable") {
		t.Fatalf("write without quorum: result %v, err %v; want 503 with an unavailable error", res, err)
	}
	t.Logf("write without quorum failed after %s: %v", elapsed.Round(time.Millisecond), err)
	if elapsed > timeout+5*time.Second {
		t.Fatalf("write without quorum took %s with a %s timeout", elapsed, timeout)
	}
	st, err := survivor.state()
	if err != nil {
		t.Fatal(err)
	}
	if st.Hash != before.Hash || st.Domains != total {
		t.Fatalf("survivor state changed without quorum: %+v, want hash %s", st, before.Hash)
	}
	if missing, err := survivor.missingDomains([]string{fmt.Sprintf("d%05d", total)}); err != nil || len(missing) != 1 {
		t.Fatalf("the write without quorum was applied (missing %v, err %v)", missing, err)
	}
}

func TestProcessClusterConcurrentRefreshesOfOneSerialHaveExactlyOneWinner(t *testing.T) {
	testenv.SkipIfShort(t, "starts real processes")
	c := newProcCluster(t, 3)
	fx := newFSMFixture(t)
	setup := []any{
		&meshcav1.SetCACommand{Roots: [][]byte{fxRoot}, ActiveIssuer: fxIssuer(fxIssuerID, fxRoot, fxT0.Add(365*24*time.Hour))},
		&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: fxDomain}},
		&meshcav1.PutServiceCommand{Service: &meshcav1.Service{Domain: fxDomain, Name: fxService, LaunchGrants: []string{fxProvider}}},
		&meshcav1.PutProviderCommand{Provider: &meshcav1.Provider{Name: fxProvider, DnsSuffix: "k8s.mesh.example", Enabled: true}},
		fx.register(fxInstance1, "a1", "k1"),
	}
	for _, body := range setup {
		res, err := c.nodes[0].propose(fx.cmd(body), waitTimeout)
		if err != nil || res.GetCode() != meshcav1.ResultCode_RESULT_CODE_OK {
			t.Fatalf("setup %T: %v %v", body, res, err)
		}
	}

	const clients = 24 // 8 on each node
	cmds := make([]*meshcav1.Command, clients)
	for i := range cmds {
		// Every client presents the current serial a1 and asks for its own new serial and key.
		cmds[i] = fx.cmd(fx.refresh(fxInstance1, "a1", fmt.Sprintf("a1%04x", i+1), fmt.Sprintf("key-%d", i)))
	}
	codes := make([]meshcav1.ResultCode, clients)
	errs := make([]error, clients)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := c.nodes[i%3].propose(cmds[i], waitTimeout)
			codes[i], errs[i] = res.GetCode(), err
		}()
	}
	close(start)
	wg.Wait()
	wins, mismatches, revoked := 0, 0, 0
	for i := range cmds {
		switch {
		case errs[i] != nil:
			t.Fatalf("client %d: %v", i, errs[i])
		case codes[i] == meshcav1.ResultCode_RESULT_CODE_OK:
			wins++
		case codes[i] == meshcav1.ResultCode_RESULT_CODE_SERIAL_MISMATCH:
			mismatches++
		case codes[i] == meshcav1.ResultCode_RESULT_CODE_INSTANCE_REVOKED:
			revoked++ // arrived after a mismatch had revoked the instance
		default:
			t.Fatalf("client %d: result %v", i, codes[i])
		}
	}
	t.Logf("%d clients on 3 nodes: %d won, %d got SerialMismatch, %d found the instance revoked", clients, wins, mismatches, revoked)
	if wins != 1 || mismatches < 1 {
		t.Fatalf("%d refreshes won and %d mismatched; want exactly one winner and at least one mismatch", wins, mismatches)
	}
	c.waitSameState("")
	for _, p := range c.nodes {
		inst, err := p.instance(fxProvider, fxDomain, fxService, fxInstance1)
		if err != nil {
			t.Fatalf("%s: %v", p.id, err)
		}
		if !inst.GetRevoked() {
			t.Fatalf("%s: a mismatching serial was presented but the instance is not revoked: %v", p.id, inst)
		}
	}
}
