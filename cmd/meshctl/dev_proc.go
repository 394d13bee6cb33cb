//go:build unix

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshca/meshca/sds"
)

// devProcess is one process `meshctl dev up` started, as recorded in DIR/processes.json for
// `meshctl dev down`.
type devProcess struct {
	// Name says what it is: n1..n5, provider, agent, demo-server, demo-client.
	Name string `json:"name"`
	// PID is its process id; it leads its own session and process group.
	PID int `json:"pid"`
	// StartTicks is its start time in clock ticks since boot (/proc/<pid>/stat), so a pid
	// reused by another process after a reboot or a crash is never signalled. Zero where
	// /proc is not available.
	StartTicks uint64 `json:"start_ticks"`
	// Args is its command line.
	Args []string `json:"args"`
	// Log receives its standard output and error.
	Log string `json:"log"`
}

// devProcessesFile is where the started processes are recorded, in start order.
const devProcessesFile = "processes.json"

// readProcesses reads the records of dir; none (and no error) when there are none.
func readProcesses(dir string) ([]devProcess, error) {
	raw, err := os.ReadFile(filepath.Join(dir, devProcessesFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var procs []devProcess
	if err := json.Unmarshal(raw, &procs); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, devProcessesFile), err)
	}
	return procs, nil
}

// writeProcesses replaces the records of dir.
func writeProcesses(dir string, procs []devProcess) error {
	raw, err := json.MarshalIndent(procs, "", "  ")
	if err != nil {
		return err
	}
	return sds.WriteFileAtomic(filepath.Join(dir, devProcessesFile), append(raw, '\n'), 0o600)
}

// procStat is what /proc/<pid>/stat says about a process.
type procStat struct {
	state      byte
	startTicks uint64
}

// parseProcStat reads the state (field 3) and start time (field 22) of a /proc/<pid>/stat
// line. The command name (field 2) is in parentheses and may itself hold spaces and
// parentheses, so the fields are counted from the last ')'.
func parseProcStat(line string) (procStat, error) {
	end := strings.LastIndexByte(line, ')')
	if end < 0 {
		return procStat{}, errors.New("no command name")
	}
	fields := strings.Fields(line[end+1:])
	// fields[0] is field 3 (state); field 22 (starttime) is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return procStat{}, fmt.Errorf("%d fields after the command name, want at least 20", len(fields))
	}
	ticks, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("starttime %q: %w", fields[19], err)
	}
	return procStat{state: fields[0][0], startTicks: ticks}, nil
}

// procRoot is where the process table is read; a variable so tests can point elsewhere.
var procRoot = "/proc"

// startTicksOf reads a process's start time, or 0 when /proc is not available.
func startTicksOf(pid int) uint64 {
	raw, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	st, err := parseProcStat(string(raw))
	if err != nil {
		return 0
	}
	return st.startTicks
}

// running reports whether the recorded process still runs: it exists, is not a zombie (an
// exited process its parent has not reaped yet) and, where /proc tells, started when the
// record says (the pid was not reused).
func (p devProcess) running() bool {
	raw, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(p.PID), "stat"))
	if err == nil {
		st, err := parseProcStat(string(raw))
		if err != nil {
			return false
		}
		if p.StartTicks != 0 && st.startTicks != p.StartTicks {
			return false
		}
		return st.state != 'Z' && st.state != 'X'
	}
	if _, statErr := os.Stat(filepath.Join(procRoot, "self")); statErr == nil {
		// /proc works and has no such process.
		return false
	}
	// No /proc: ask the kernel whether the pid exists.
	return syscall.Kill(p.PID, 0) == nil
}

// signal sends sig to the process's group (it leads one), so helpers it started go too.
func (p devProcess) signal(sig syscall.Signal) error {
	err := syscall.Kill(-p.PID, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// stopOrder is the order processes stop in: the demo first (its last requests end cleanly),
// then the agent, the provider, and the CA nodes together.
func stopOrder(procs []devProcess) [][]devProcess {
	rank := func(name string) int {
		switch name {
		case "demo-client":
			return 0
		case "demo-server":
			return 1
		case "agent":
			return 2
		case "provider":
			return 3
		}
		return 4
	}
	groups := make([][]devProcess, 5)
	for _, p := range procs {
		r := rank(p.Name)
		groups[r] = append(groups[r], p)
	}
	var out [][]devProcess
	for _, g := range groups {
		if len(g) > 0 {
			out = append(out, g)
		}
	}
	return out
}

// stopProcesses stops the recorded processes that still run, group by group in stopOrder:
// SIGTERM, then SIGKILL for those still running after timeout. It returns an error naming
// any process that outlived SIGKILL.
func stopProcesses(procs []devProcess, timeout time.Duration, out io.Writer) error {
	var stuck []string
	for _, group := range stopOrder(procs) {
		var live []devProcess
		for _, p := range group {
			if p.running() {
				live = append(live, p)
			}
		}
		if len(live) == 0 {
			continue
		}
		for _, p := range live {
			fmt.Fprintf(out, "stopping %s (pid %d)\n", p.Name, p.PID)
			if err := p.signal(syscall.SIGTERM); err != nil {
				fmt.Fprintf(out, "%s: SIGTERM: %v\n", p.Name, err)
			}
		}
		live = waitExit(live, timeout)
		for _, p := range live {
			fmt.Fprintf(out, "%s (pid %d) still runs %s after SIGTERM: SIGKILL\n", p.Name, p.PID, timeout)
			if err := p.signal(syscall.SIGKILL); err != nil {
				fmt.Fprintf(out, "%s: SIGKILL: %v\n", p.Name, err)
			}
		}
		for _, p := range waitExit(live, killWait) {
			stuck = append(stuck, fmt.Sprintf("%s (pid %d)", p.Name, p.PID))
		}
	}
	if len(stuck) > 0 {
		return fmt.Errorf("still running after SIGKILL: %s", strings.Join(stuck, ", "))
	}
	return nil
}

// killWait bounds the wait for a process to go after SIGKILL.
const killWait = 10 * time.Second

// waitExit polls until every process stopped running or timeout passed, and returns those
// still running.
func waitExit(procs []devProcess, timeout time.Duration) []devProcess {
	deadline := time.Now().Add(timeout)
	for {
		var live []devProcess
		for _, p := range procs {
			if p.running() {
				live = append(live, p)
			}
		}
		if len(live) == 0 || !time.Now().Before(deadline) {
			return live
		}
		procs = live
		time.Sleep(50 * time.Millisecond)
	}
}

// devDown stops every process recorded in dir and forgets them. A folder with nothing
// recorded has nothing to stop.
func devDown(dir string, timeout time.Duration, out io.Writer) error {
	procs, err := readProcesses(dir)
	if err != nil {
		return err
	}
	if len(procs) == 0 {
		fmt.Fprintf(out, "nothing to stop in %s\n", dir)
		return nil
	}
	if err := stopProcesses(procs, timeout, out); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, devProcessesFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	fmt.Fprintf(out, "stopped; data and logs stay in %s\n", dir)
	return nil
}

// supervisor starts the processes of one `meshctl dev up`, records each in DIR/processes.json
// as soon as it runs, and notices when one exits.
type supervisor struct {
	dir string

	mu       sync.Mutex
	children []*child
}

// child is one started process.
type child struct {
	rec    devProcess
	exited chan struct{}
	err    error // how it exited; read after exited is closed
}

// start runs bin with args in its own session (so a terminal's Ctrl-C reaches meshctl alone
// and the process outlives meshctl), output appended to logPath.
func (s *supervisor) start(name, bin string, args []string, logPath string) (*child, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{
		rec:    devProcess{Name: name, PID: cmd.Process.Pid, StartTicks: startTicksOf(cmd.Process.Pid), Args: append([]string{bin}, args...), Log: logPath},
		exited: make(chan struct{}),
	}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	s.mu.Lock()
	s.children = append(s.children, c)
	recs := s.recordsLocked()
	s.mu.Unlock()
	if err := writeProcesses(s.dir, recs); err != nil {
		return c, fmt.Errorf("recording %s: %w", name, err)
	}
	return c, nil
}

func (s *supervisor) recordsLocked() []devProcess {
	recs := make([]devProcess, 0, len(s.children))
	for _, c := range s.children {
		recs = append(recs, c.rec)
	}
	return recs
}

// records are the processes started so far.
func (s *supervisor) records() []devProcess {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recordsLocked()
}

// exitedChild returns an error naming the first child that has exited, with the end of its
// log; nil while all run.
func (s *supervisor) exitedChild() error {
	s.mu.Lock()
	children := append([]*child(nil), s.children...)
	s.mu.Unlock()
	for _, c := range children {
		select {
		case <-c.exited:
			return fmt.Errorf("%s exited (%v); the end of %s:\n%s", c.rec.Name, c.err, c.rec.Log, logTail(c.rec.Log, 15))
		default:
		}
	}
	return nil
}

// exitedAny is closed when any child started so far exits.
func (s *supervisor) exitedAny(ctx context.Context) <-chan struct{} {
	s.mu.Lock()
	children := append([]*child(nil), s.children...)
	s.mu.Unlock()
	ch := make(chan struct{})
	var once sync.Once
	for _, c := range children {
		go func() {
			select {
			case <-c.exited:
				once.Do(func() { close(ch) })
			case <-ctx.Done():
			}
		}()
	}
	return ch
}

// waitFor polls probe until it succeeds, a child exits, or ctx ends; the error names what
// was awaited and the probe's last answer.
func (s *supervisor) waitFor(ctx context.Context, what string, probe func(context.Context) error) error {
	var last error
	for {
		if err := s.exitedChild(); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = probe(pctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// logTail is the last n lines of a log file.
func logTail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
