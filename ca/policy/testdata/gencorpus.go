//go:build ignore

// gencorpus writes the committed seed corpus of FuzzWorkloadCSR and FuzzSpec:
//
//	cd ca/policy && go run testdata/gencorpus.go
//
// Each seed is a real input: valid CSRs of every allowed key type, CSRs that break one rule
// each, and tls.json specs, valid and not.
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"log"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

const (
	td       = "mesh.example"
	domain   = "sports"
	service  = "api"
	suffix   = "k8s.mesh.example"
	instance = "pod-1.ns.cluster-a"
)

func csr(key crypto.Signer, edit func(*x509.CertificateRequest)) []byte {
	u, _ := url.Parse("spiffe://mesh.example/ns/sports/sa/api")
	tmpl := &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "sports.api"},
		DNSNames: []string{"api.sports.k8s.mesh.example", "pod-1.ns.cluster-a.instanceid.athenz.k8s.mesh.example"},
		URIs:     []*url.URL{u},
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		log.Fatal(err)
	}
	return der
}

func pemCSR(path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	b, _ := pem.Decode(data)
	return b.Bytes
}

func write(dir, name string, values ...any) {
	var b strings.Builder
	b.WriteString("go test fuzz v1\n")
	for _, v := range values {
		switch v := v.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case string:
			fmt.Fprintf(&b, "string(%q)\n", v)
		case int64:
			fmt.Fprintf(&b, "int64(%d)\n", v)
		case bool:
			fmt.Fprintf(&b, "bool(%t)\n", v)
		default:
			log.Fatalf("type %T", v)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(b.String()), 0o644); err != nil {
		log.Fatal(err)
	}
}

func main() {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	r2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	r1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)

	tampered := csr(p256, nil)
	tampered[len(tampered)-3] ^= 0xff
	bc, _ := asn1.Marshal(struct{ IsCA bool }{true})

	w := "testdata/fuzz/FuzzWorkloadCSR"
	seed := func(name string, der []byte, ttl int64, purposes string, serverAllowed bool, serial []byte) {
		write(w, name, der, td, domain, service, suffix, instance, ttl, purposes, serverAllowed, serial)
	}
	seed("valid-p256", csr(p256, nil), 0, "", false, []byte{0x7f, 0x01})
	seed("valid-p384-server", csr(p384, nil), 86400, "client_auth,server_auth", true, []byte{0x01, 0x02, 0x03})
	seed("valid-rsa2048", csr(r2048, nil), 3600, "client_auth", false, []byte{0x55})
	seed("valid-ed25519", csr(ed, nil), 2592000, "", false, []byte{0x10})
	seed("valid-openssl", pemCSR("testdata/openssl-p256.csr.pem"), 0, "", false, []byte{0x01})
	seed("server-auth-not-allowed", csr(p256, nil), 0, "server_auth", false, []byte{0x01})
	seed("tampered-signature", tampered, 0, "", false, []byte{0x01})
	seed("rsa1024", csr(r1024, nil), 0, "", false, []byte{0x01})
	seed("dsa", pemCSR("testdata/dsa.csr.pem"), 0, "", false, []byte{0x01})
	seed("othername-san", pemCSR("testdata/openssl-othername.csr.pem"), 0, "", false, []byte{0x01})
	seed("evil-dns-san", csr(p256, func(c *x509.CertificateRequest) { c.DNSNames = append(c.DNSNames, "x.evil.com") }), 0, "", false, []byte{0x01})
	seed("ca-true", csr(p256, func(c *x509.CertificateRequest) {
		c.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}}
	}), 0, "", false, []byte{0x01})
	seed("ttl-too-long", csr(p256, nil), 31*86400, "", false, []byte{0x01})
	seed("serial-too-long", csr(p256, nil), 0, "", false, []byte(strings.Repeat("\xff", 21)))
	seed("garbage", []byte("-----BEGIN CERTIFICATE REQUEST-----"), 0, "", false, nil)

	s := "testdata/fuzz/FuzzSpec"
	specs := map[string]string{
		"server":           `{"common_name":"server.example.com","purposes":["server_auth"],"sans":["server.example.com","server2.example.com"],"lifetime":365,"csr_file":"server-cert-request.csr"}`,
		"client-overrides": `{"common_name":"partner client","organization":"Partner Ltd","organizational_unit":"Ops","locality":"Leeds","state":"West Yorkshire","country":"GB","force_issue":true}`,
		"dropped-sans":     `{"common_name":"cn.example.com","sans":["ok.example.com","bad_name.example.com","*.example.com","10.0.0.1"]}`,
		"tls-json-array":   `[{"common_name":"a.example.com"},{"common_name":"b","lifetime":30}]`,
		"unknown-field":    `{"common_name":"a","lifetme":30}`,
		"duplicate-key":    `{"common_name":"a","lifetime":1,"lifetime":365}`,
		"wrong-type":       `{"common_name":"a","lifetime":"365"}`,
		"nested":           `{"common_name":"a","sans":[[[[{"x":[1,2,{"y":null}]}]]]]}`,
		"lifetime-huge":    `{"common_name":"a","lifetime":9223372036854775807}`,
		"not-json":         `{"common_name":`,
	}
	for name, js := range specs {
		write(s, name, []byte(js))
	}
}
