package faulttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Labels on everything a test creates: the run it belongs to, and the process that owns it,
// so a later run can remove what a crashed run left behind without touching a live one.
const (
	labelRun   = "org.meshca.faulttest.run"
	labelOwner = "org.meshca.faulttest.owner"
)

// dockerTimeout bounds one docker command (a build, a stop with its grace period).
const dockerTimeout = 3 * time.Minute

// docker runs the docker CLI for one test run.
type docker struct {
	t   testing.TB
	bin string
	// run names and labels the run's containers, networks and volumes.
	run string
}

// newDocker starts a run: it removes what earlier runs whose process is gone left behind,
// and removes this run's containers, networks and volumes at the end of the test.
func newDocker(t testing.TB, bin string) *docker {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	d := &docker{t: t, bin: bin, run: "mcft-" + hex.EncodeToString(b)}
	removeLeftovers(t, bin)
	t.Cleanup(func() { d.removeRun() })
	return d
}

// labels are the flags that mark a container, network or volume as this run's.
func (d *docker) labels() []string {
	return []string{"--label", labelRun + "=" + d.run, "--label", labelOwner + "=" + strconv.Itoa(os.Getpid())}
}

// name is a name in this run's namespace.
func (d *docker) name(s string) string { return d.run + "-" + s }

// cmd runs docker with args and returns its trimmed standard output; the error carries the
// standard error.
func (d *docker) cmd(args ...string) (string, error) {
	return dockerCmd(d.bin, args...)
}

// must is cmd that fails the test on error.
func (d *docker) must(args ...string) string {
	d.t.Helper()
	out, err := d.cmd(args...)
	if err != nil {
		d.t.Fatal(err)
	}
	return out
}

func dockerCmd(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	c := exec.CommandContext(ctx, bin, args...)
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// logs returns what a container wrote to its standard output and error (the last tail lines
// when tail > 0).
func (d *docker) logs(name string, tail int) string {
	args := []string{"logs"}
	if tail > 0 {
		args = append(args, "--tail", strconv.Itoa(tail))
	}
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.bin, append(args, name)...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%s(docker logs %s: %v)", out, name, err)
	}
	return string(out)
}

// removeRun removes the run's containers (with their anonymous volumes), then its networks
// and volumes.
func (d *docker) removeRun() {
	removeLabelled(d.t, d.bin, labelRun+"="+d.run, nil)
}

// removeLeftovers removes the containers, networks and volumes of earlier runs whose owning
// process no longer runs.
func removeLeftovers(t testing.TB, bin string) {
	t.Helper()
	removeLabelled(t, bin, labelOwner, func(owner string) bool {
		pid, err := strconv.Atoi(owner)
		if err != nil || pid <= 0 {
			return true
		}
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	})
}

// removeLabelled removes what carries the label filter (key or key=value); with gone set,
// only those whose owner label gone approves.
func removeLabelled(t testing.TB, bin, filter string, gone func(owner string) bool) {
	t.Helper()
	kinds := []struct {
		list, owner, remove []string
	}{
		{[]string{"ps", "-a", "--format", "{{.ID}}"}, []string{"inspect", "--format", `{{index .Config.Labels "` + labelOwner + `"}}`}, []string{"rm", "-f", "-v"}},
		{[]string{"network", "ls", "--format", "{{.ID}}"}, []string{"network", "inspect", "--format", `{{index .Labels "` + labelOwner + `"}}`}, []string{"network", "rm"}},
		{[]string{"volume", "ls", "--format", "{{.Name}}"}, []string{"volume", "inspect", "--format", `{{index .Labels "` + labelOwner + `"}}`}, []string{"volume", "rm", "-f"}},
	}
	for _, k := range kinds {
		out, err := dockerCmd(bin, append(k.list, "--filter", "label="+filter)...)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			continue
		}
		var ids []string
		for _, id := range strings.Fields(out) {
			if gone != nil {
				owner, err := dockerCmd(bin, append(k.owner, id)...)
				if err != nil || !gone(owner) {
					continue
				}
			}
			ids = append(ids, id)
		}
		if len(ids) == 0 {
			continue
		}
		if _, err := dockerCmd(bin, append(k.remove, ids...)...); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
}
