package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestResolveSettings(t *testing.T) {
	const cfgPath = "/etc/meshca/meshctl.yaml"
	file := []byte("addr: file:1\ncert: certs/admin.pem\nkey: /abs/admin.key\nca_bundle: ca.pem\noutput: json\n")
	files := map[string][]byte{cfgPath: file, "/home/u/.config/meshca/meshctl.yaml": []byte("addr: home:1\ncert: c\nkey: k\nca_bundle: b\n")}
	read := func(p string) ([]byte, error) {
		if b, ok := files[p]; ok {
			return b, nil
		}
		return nil, fs.ErrNotExist
	}
	home := func() (string, error) { return "/home/u/.config", nil }
	noHome := func() (string, error) { return "", errors.New("no home") }
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	full := map[string]string{envAddr: "env:1", envCert: "env.crt", envKey: "env.key", envCABundle: "env-ca.pem"}
	tests := []struct {
		name    string
		flags   connFlags
		env     map[string]string
		home    func() (string, error)
		want    settings
		wantErr string
	}{
		{"a flag wins over the environment and the config file",
			connFlags{addr: "flag:1", config: cfgPath}, full, noHome,
			settings{addr: "flag:1", cert: "env.crt", key: "env.key", caBundle: "env-ca.pem", output: "json", timeout: defaultTimeout}, ""},
		{"the environment wins over the config file",
			connFlags{}, map[string]string{envConfig: cfgPath, envAddr: "env:1", envOutput: "table"}, noHome,
			settings{addr: "env:1", cert: "/etc/meshca/certs/admin.pem", key: "/abs/admin.key", caBundle: "/etc/meshca/ca.pem", output: "table", timeout: defaultTimeout}, ""},
		{"relative paths of the config file are relative to its folder",
			connFlags{config: cfgPath}, nil, noHome,
			settings{addr: "file:1", cert: "/etc/meshca/certs/admin.pem", key: "/abs/admin.key", caBundle: "/etc/meshca/ca.pem", output: "json", timeout: defaultTimeout}, ""},
		{"the default config file is read when it exists",
			connFlags{}, nil, home,
			settings{addr: "home:1", cert: "/home/u/.config/meshca/c", key: "/home/u/.config/meshca/k", caBundle: "/home/u/.config/meshca/b", output: "table", timeout: defaultTimeout}, ""},
		{"a missing default config file is no error",
			connFlags{}, full, func() (string, error) { return "/nowhere", nil },
			settings{addr: "env:1", cert: "env.crt", key: "env.key", caBundle: "env-ca.pem", output: "table", timeout: defaultTimeout}, ""},
		{"a missing named config file is an error",
			connFlags{config: "/nowhere.yaml"}, full, noHome, settings{}, "config: "},
		{"an unset address names the flag, the variable and the key",
			connFlags{}, map[string]string{envCert: "c", envKey: "k", envCABundle: "b"}, noHome, settings{},
			"--addr: not set (give --addr, set MESHCA_ADMIN_ADDR, or put addr in the config file)"},
		{"an unset CA bundle is an error",
			connFlags{addr: "a:1", cert: "c", key: "k"}, nil, noHome, settings{}, "--ca-bundle: not set"},
		{"an address without a port is refused",
			connFlags{addr: "localhost", cert: "c", key: "k", caBundle: "b"}, nil, noHome, settings{}, `--addr: "localhost" is not host:port`},
		{"an unknown output format is a usage error",
			connFlags{output: "yaml"}, full, noHome, settings{}, `--output: "yaml" is not table or json`},
		{"the timeout comes from the environment",
			connFlags{}, map[string]string{envAddr: "a:1", envCert: "c", envKey: "k", envCABundle: "b", envTimeout: "5s"}, noHome,
			settings{addr: "a:1", cert: "c", key: "k", caBundle: "b", output: "table", timeout: 5 * time.Second}, ""},
		{"a timeout that is no duration is a usage error",
			connFlags{timeout: "soon"}, full, noHome, settings{}, `--timeout: "soon"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveSettings(tt.flags, env(tt.env), read, tt.home)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestConfigFileIsStrict(t *testing.T) {
	_, err := decodeConfig([]byte("addr: a:1\nadress: b:2\n"))
	if err == nil || !strings.Contains(err.Error(), "adress") {
		t.Fatalf("an unknown key: %v", err)
	}
}

func TestParseInterleaved(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantPos  []string
		wantFlag []string
	}{
		{"flags after a positional argument are parsed", []string{"sports", "--admin", "a", "--admin", "b"}, []string{"sports"}, []string{"a", "b"}},
		{"flags between positional arguments are parsed", []string{"x", "-admin=a", "y"}, []string{"x", "y"}, []string{"a"}},
		{"a double dash ends the flags", []string{"x", "--", "--admin", "y"}, []string{"x", "--admin", "y"}, nil},
		{"no arguments", nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			var admins stringList
			fs.Var(&admins, "admin", "")
			pos, err := parseInterleaved(fs, tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(pos, tt.wantPos) || !slices.Equal([]string(admins), tt.wantFlag) {
				t.Fatalf("positional %q flags %q, want %q %q", pos, admins, tt.wantPos, tt.wantFlag)
			}
		})
	}
}

// The command table: unique paths, no command hidden behind another, every command documented
// and its flags declared without panicking.
func TestCommandTable(t *testing.T) {
	cmds := commandTable()
	seen := map[string]bool{}
	for _, c := range cmds {
		if seen[c.path] {
			t.Errorf("command %q appears twice", c.path)
		}
		seen[c.path] = true
		if c.summary == "" {
			t.Errorf("command %q has no summary", c.path)
		}
		fs := flag.NewFlagSet(c.path, flag.ContinueOnError)
		if !c.noClient {
			new(connFlags).register(fs)
		}
		if c.setup(fs) == nil {
			t.Errorf("command %q has no run function", c.path)
		}
		fs.VisitAll(func(f *flag.Flag) {
			if f.Usage == "" {
				t.Errorf("command %q: flag --%s has no usage", c.path, f.Name)
			}
		})
	}
	for _, a := range cmds {
		for _, b := range cmds {
			if a != b && strings.HasPrefix(b.path+" ", a.path+" ") {
				t.Errorf("command %q is a prefix of %q: the longer one could never be selected with arguments", a.path, b.path)
			}
		}
	}
	// Every call of the admin API has a command.
	for _, want := range []string{
		"domain add", "domain get", "domain list", "domain delete", "domain admin add", "domain admin remove",
		"service add", "service get", "service list", "service delete", "service key add", "service key remove", "service grant add", "service grant remove",
		"provider add", "provider get", "provider list", "provider delete", "provider enable", "provider disable",
		"instance list", "instance get", "instance revoke", "token issue",
		"csr submit", "csr list", "csr approve", "csr deny", "csr get", "ca status", "crl get",
		"cluster status", "cluster join", "cluster remove", "cluster transfer-leader", "cluster snapshot", "events watch",
	} {
		if !seen[want] {
			t.Errorf("no command %q", want)
		}
	}
}

// Command line errors: one line naming the command and the problem, then a usage hint, exit 2;
// help goes to standard output with exit 0.
func TestRunCommandLineErrors(t *testing.T) {
	env := func(string) string { return "" }
	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     string
		stderrLine string
	}{
		{"no command lists the commands", nil, exitUsage, "", "meshctl administers a meshca cluster"},
		{"help lists the commands", []string{"help"}, exitOK, "domain add NAME", ""},
		{"an unknown command", []string{"frob"}, exitUsage, "", `meshctl: unknown command "frob" (run "meshctl help" for the list)`},
		{"a group without a subcommand", []string{"domain"}, exitUsage, "", "meshctl: domain: a subcommand is required"},
		{"an unknown subcommand", []string{"domain", "frob"}, exitUsage, "", `meshctl: unknown command "domain frob"`},
		{"a missing argument", []string{"domain", "add"}, exitUsage, "", "meshctl: domain add: expected NAME"},
		{"an extra argument", []string{"domain", "get", "a", "b"}, exitUsage, "", `meshctl: domain get: unexpected argument "b" (expected NAME)`},
		{"an unknown flag", []string{"domain", "list", "--frob"}, exitUsage, "", "meshctl: domain list: flag provided but not defined: -frob"},
		{"a command's help", []string{"provider", "add", "-h"}, exitOK, "-dns-suffix", ""},
		{"an unset address", []string{"domain", "list"}, exitError, "", "meshctl: domain list: --addr: not set"},
		{"a bad global flag value", []string{"--output", "xml", "domain", "list", "--addr", "a:1", "--cert", "c", "--key", "k", "--ca-bundle", "b"}, exitUsage, "", `meshctl: domain list: --output: "xml" is not table or json`},
		{"a missing required flag", []string{"crl", "get", "--addr", "a:1", "--cert", "c", "--key", "k", "--ca-bundle", "b"}, exitUsage, "", "meshctl: crl get: --out is required"},
		{"an unreadable client certificate", []string{"domain", "list", "--addr", "a:1", "--cert", "/nonexistent.pem", "--key", "k", "--ca-bundle", "b"}, exitError, "", "meshctl: domain list: --cert/--key: open /nonexistent.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			a := newApp(&stdout, &stderr, env)
			a.configDir = func() (string, error) { return "", errors.New("no config dir in tests") }
			code := a.run(context.Background(), tt.args)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.stdout) {
				t.Fatalf("stdout %q does not contain %q", stdout.String(), tt.stdout)
			}
			if tt.stderrLine != "" {
				first, _, _ := strings.Cut(stderr.String(), "\n")
				if !strings.HasPrefix(first, tt.stderrLine) {
					t.Fatalf("first stderr line %q, want it to start with %q", first, tt.stderrLine)
				}
			}
		})
	}
}

func TestEveryCommandGroupIsReachable(t *testing.T) {
	paths := map[string]bool{}
	for _, c := range commandTable() {
		paths[c.path] = true
	}
	for _, want := range []string{"domain add", "cluster status", "dev up", "dev down", "agent secrets", "events watch"} {
		if !paths[want] {
			t.Errorf("meshctl %s is not in the command table", want)
		}
	}
}
