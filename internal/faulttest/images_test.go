package faulttest

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clustertest"
	"github.com/meshca/meshca/internal/testenv"
)

func TestMain(m *testing.M) {
	code := clustertest.Main(m)
	if providerDir != "" {
		os.RemoveAll(providerDir)
	}
	os.Exit(code)
}

// imageTag tags the images the tests build from the tree under test, apart from the dev
// images `make images` builds.
const imageTag = "faulttest"

// images are the image references a test runs.
type images struct {
	server, agent, meshctl, provider string
}

var (
	imagesOnce  sync.Once
	imagesErr   error
	providerDir string
)

// buildImages builds, once per test binary, the binaries of this tree and their images with
// hack/images.sh (what `make images` runs), and the fault tests' provider image.
func buildImages(t testing.TB) (images, string) {
	t.Helper()
	bin := testenv.RequireDocker(t)
	// Binary builds once per test binary; the three land in one directory, which is what
	// hack/images.sh takes as BIN.
	dir := filepath.Dir(clustertest.Binary(t, "meshca-server"))
	clustertest.Binary(t, "meshca-agent")
	clustertest.Binary(t, "meshctl")
	imagesOnce.Do(func() { imagesErr = buildAll(bin, dir) })
	if imagesErr != nil {
		t.Fatal(imagesErr)
	}
	return images{
		server:   "meshca/meshca-server:" + imageTag,
		agent:    "meshca/meshca-agent:" + imageTag,
		meshctl:  "meshca/meshctl:" + imageTag,
		provider: "meshca/faulttest-provider:" + imageTag,
	}, bin
}

func buildAll(docker, binDir string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(root, "hack", "images.sh"))
	cmd.Env = append(os.Environ(), "BIN="+binDir, "TAG="+imageTag)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("hack/images.sh: %w\n%s", err, out)
	}
	// The provider is a fixture of these tests: a static binary in a scratch image.
	if providerDir, err = os.MkdirTemp("", "meshca-faulttest-"); err != nil {
		return err
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		gobin = p
	}
	build := exec.Command(gobin, "build", "-o", filepath.Join(providerDir, "provider"), "github.com/meshca/meshca/internal/faulttest/provider")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build internal/faulttest/provider: %w\n%s", err, out)
	}
	dockerfile := "FROM scratch\nCOPY provider /usr/local/bin/provider\nLABEL org.meshca.image=faulttest-provider\nENTRYPOINT [\"/usr/local/bin/provider\"]\n"
	if err := os.WriteFile(filepath.Join(providerDir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return err
	}
	b := exec.Command(docker, "build", "-q", "-t", "meshca/faulttest-provider:"+imageTag, providerDir)
	b.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	if out, err := b.CombinedOutput(); err != nil {
		return fmt.Errorf("docker build provider: %w\n%s", err, out)
	}
	if out, err := exec.Command(docker, "image", "prune", "-f", "--filter", "label=org.meshca.image").CombinedOutput(); err != nil {
		return fmt.Errorf("docker image prune: %w\n%s", err, out)
	}
	return nil
}

// moduleRoot is the directory of go.mod, found upward from the test's directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// Every image starts its binary: the scratch filesystem holds whatever the binary needs to
// be loaded (meshca-server's shared libraries) and the binary answers -help by printing its
// flags.
func TestImagesRun(t *testing.T) {
	img, bin := buildImages(t)
	d := newDocker(t, bin)
	for _, tc := range []struct {
		name, image string
		wantExit    int
		wantOutput  string
	}{
		{"meshca-server -help exits 0 with its flags", img.server, 0, "-config"},
		{"meshctl -help exits 0 with its commands", img.meshctl, 0, "usage: meshctl"},
		// The agent treats -help as a bad command line (exit 2, like any other), after
		// printing its flags; that it printed them is what proves the binary runs.
		{"meshca-agent -help prints its flags", img.agent, 2, "-config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"run", "--rm"}, d.labels()...)
			args = append(args, tc.image, "-help")
			c := exec.Command(bin, args...)
			out, err := c.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantExit || !strings.Contains(string(out), tc.wantOutput) {
				t.Fatalf("docker run %s -help: exit %d, want %d; output:\n%s", tc.image, code, tc.wantExit, out)
			}
		})
	}
}

// The meshca-server image carries the SoftHSM2 module and the libraries it needs: a node
// in pkcs11 mode generates its CA key on a token mounted into the container, becomes ready
// and answers /healthz over its published port.
func TestServerImagePKCS11(t *testing.T) {
	img, bin := buildImages(t)
	tok := testenv.NewSoftHSMToken(t, "meshca-image")
	d := newDocker(t, bin)

	// The token directory goes into the container at /hsm, with a config pointing there.
	stage := filepath.Join(t.TempDir(), "hsm")
	if err := os.CopyFS(stage, os.DirFS(filepath.Dir(tok.ConfPath))); err != nil {
		t.Fatal(err)
	}
	conf := "directories.tokendir = /hsm/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	if err := os.WriteFile(filepath.Join(stage, "softhsm2.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ports := clustertest.FreePorts(t, 2)
	cfg := fmt.Sprintf(`node_id: n1
data_dir: /data
trust_domain: mesh.test
listen: {grpc: "0.0.0.0:8443", http: "0.0.0.0:8080", cluster: "0.0.0.0:7000", cluster_advertise: "127.0.0.1:7000"}
ca:
  mode: pkcs11
  dir: /data/ca
  pkcs11: {module: %s, token_label: %s, key_label: meshca-root, pin_file: /hsm/%s}
raft: {bootstrap: true, peers: [{id: n1, address: "127.0.0.1:7000"}]}
`, tok.ModulePath, tok.Label, filepath.Base(tok.PINFile))
	if err := os.WriteFile(filepath.Join(stage, "server.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	name := d.name("pkcs11")
	args := append([]string{"create", "--name", name}, d.labels()...)
	args = append(args, "-p", ports[0]+":8443", "-p", ports[1]+":8080", "-e", "SOFTHSM2_CONF=/hsm/softhsm2.conf",
		img.server, "-config", "/hsm/server.yaml")
	d.must(args...)
	d.must("cp", stage, name+":/")
	d.must("start", name)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- %s log ---\n%s", name, d.logs(name, 100))
		}
	})

	// The server's certificate is self-issued by the token's key; /healthz and /readyz carry
	// no secret, so this check does not verify it.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, path := range []string{"/healthz", "/readyz"} {
		clustertest.Poll(t, name+" "+path, func() error {
			if state, _ := d.cmd("inspect", "--format", "{{.State.Status}}", name); state == "exited" {
				t.Fatalf("%s exited:\n%s", name, d.logs(name, 20))
			}
			resp, err := client.Get("https://" + ports[1] + path)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", path, resp.Status)
			}
			return nil
		})
	}
	if logs := d.logs(name, 0); !strings.Contains(logs, "generated CA key on PKCS#11 token") || !strings.Contains(logs, "CA loaded") {
		t.Fatalf("the node did not generate its CA key on the token and load it:\n%s", logs)
	}
}
