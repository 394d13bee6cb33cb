package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Environment variables meshctl reads (the ones `meshctl dev up` writes into DIR/env).
const (
	envAddr     = "MESHCA_ADMIN_ADDR"
	envCert     = "MESHCA_ADMIN_CERT"
	envKey      = "MESHCA_ADMIN_KEY"
	envCABundle = "MESHCA_CA_BUNDLE"
	envConfig   = "MESHCA_CONFIG"
	envOutput   = "MESHCA_OUTPUT"
	envTimeout  = "MESHCA_TIMEOUT"
)

// defaultConfigHint is where meshctl looks for its config file when none is named.
const defaultConfigHint = "$XDG_CONFIG_HOME/meshca/meshctl.yaml"

// Output formats.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// connFlags are the connection and output flags every client command takes; empty means "not
// given on the command line".
type connFlags struct {
	addr, cert, key, caBundle, config, output, timeout string
}

// register declares the flags on fs.
func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", "", "admin API address host:port (env "+envAddr+")")
	fs.StringVar(&c.cert, "cert", "", "client certificate PEM file (env "+envCert+")")
	fs.StringVar(&c.key, "key", "", "client private key PEM file (env "+envKey+")")
	fs.StringVar(&c.caBundle, "ca-bundle", "", "PEM file of the CA roots that sign the server's certificate (env "+envCABundle+")")
	fs.StringVar(&c.config, "config", "", "YAML config file (env "+envConfig+"; default "+defaultConfigHint+" if it exists)")
	fs.StringVar(&c.output, "output", "", "output format: table or json (env "+envOutput+"; default table)")
	fs.StringVar(&c.output, "o", "", "shorthand for --output")
	fs.StringVar(&c.timeout, "timeout", "", "deadline of each call, e.g. 30s (env "+envTimeout+"; default 30s)")
}

// configFile is meshctl's YAML config file. Relative paths are relative to the file's folder.
type configFile struct {
	Addr     string `yaml:"addr"`
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	CABundle string `yaml:"ca_bundle"`
	Output   string `yaml:"output"`
	Timeout  string `yaml:"timeout"`
}

// settings are the resolved connection settings.
type settings struct {
	addr, cert, key, caBundle string
	output                    string
	timeout                   time.Duration
}

// resolveSettings takes each setting from the flag, else the environment, else the config
// file, else its default, and checks that the connection settings are complete.
func resolveSettings(f connFlags, getenv func(string) string, readFile func(string) ([]byte, error), configDir func() (string, error)) (settings, error) {
	cfgPath, explicit := f.config, f.config != ""
	if cfgPath == "" {
		cfgPath, explicit = getenv(envConfig), getenv(envConfig) != ""
	}
	if cfgPath == "" {
		if dir, err := configDir(); err == nil {
			cfgPath = filepath.Join(dir, "meshca", "meshctl.yaml")
		}
	}
	var file configFile
	if cfgPath != "" {
		raw, err := readFile(cfgPath)
		switch {
		case err == nil:
			if file, err = decodeConfig(raw); err != nil {
				return settings{}, fmt.Errorf("config %s: %w", cfgPath, err)
			}
			file.resolvePaths(filepath.Dir(cfgPath))
		case explicit || !errors.Is(err, fs.ErrNotExist):
			return settings{}, fmt.Errorf("config: %w", err)
		}
	}
	pick := func(flagValue, env, fileValue string) string {
		if flagValue != "" {
			return flagValue
		}
		if v := getenv(env); v != "" {
			return v
		}
		return fileValue
	}
	s := settings{
		addr:     pick(f.addr, envAddr, file.Addr),
		cert:     pick(f.cert, envCert, file.Cert),
		key:      pick(f.key, envKey, file.Key),
		caBundle: pick(f.caBundle, envCABundle, file.CABundle),
		output:   pick(f.output, envOutput, file.Output),
		timeout:  defaultTimeout,
	}
	if s.output == "" {
		s.output = outputTable
	}
	if s.output != outputTable && s.output != outputJSON {
		return settings{}, usageError("--output: %q is not table or json", s.output)
	}
	if t := pick(f.timeout, envTimeout, file.Timeout); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d <= 0 {
			return settings{}, usageError("--timeout: %q is not a positive duration like 30s", t)
		}
		s.timeout = d
	}
	for _, req := range []struct{ value, flag, env, key string }{
		{s.addr, "--addr", envAddr, "addr"},
		{s.cert, "--cert", envCert, "cert"},
		{s.key, "--key", envKey, "key"},
		{s.caBundle, "--ca-bundle", envCABundle, "ca_bundle"},
	} {
		if req.value == "" {
			return settings{}, fmt.Errorf("%s: not set (give %s, set %s, or put %s in the config file)", req.flag, req.flag, req.env, req.key)
		}
	}
	if _, _, err := net.SplitHostPort(s.addr); err != nil {
		return settings{}, fmt.Errorf("--addr: %q is not host:port", s.addr)
	}
	return s, nil
}

// decodeConfig reads the config file strictly: an unknown key is an error naming it.
func decodeConfig(raw []byte) (configFile, error) {
	var c configFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return configFile{}, err
	}
	return c, nil
}

// resolvePaths makes the file paths of the config relative to its folder.
func (c *configFile) resolvePaths(dir string) {
	for _, p := range []*string{&c.Cert, &c.Key, &c.CABundle} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// dialedClient is an open connection to the admin API.
type dialedClient struct {
	conn   *grpc.ClientConn
	client meshcav1.AdminClient
}

// dial connects to the admin API with mutual TLS: the client certificate and key from files,
// the server verified against the CA bundle under the address's host name.
func dial(s settings) (*dialedClient, error) {
	cert, err := tls.LoadX509KeyPair(s.cert, s.key)
	if err != nil {
		return nil, fmt.Errorf("--cert/--key: %w", err)
	}
	pem, err := os.ReadFile(s.caBundle)
	if err != nil {
		return nil, fmt.Errorf("--ca-bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--ca-bundle: %s holds no PEM certificate", s.caBundle)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, Certificates: []tls.Certificate{cert}}
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, fmt.Errorf("--addr: %w", err)
	}
	return &dialedClient{conn: conn, client: meshcav1.NewAdminClient(conn)}, nil
}
