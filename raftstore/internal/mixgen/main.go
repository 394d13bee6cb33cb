// Command mixgen writes the issuance command mix (per instance one RecordRegister then three
// RecordRefresh commands, marshaled meshca.v1.Command envelopes) as a corpus for the log-store
// comparison in bench/logstores, which lives in its own module (it pairs raft v1.7.3 with
// raft-boltdb/v2) and so cannot import this one. Each command is written as a uvarint length
// followed by its bytes.
//
//	go run ./raftstore/internal/mixgen -n 100 -o bench/logstores/testdata/issuance-mix.bin
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

func main() {
	n := flag.Int("n", 100, "instances (four commands each)")
	out := flag.String("o", "issuance-mix.bin", "output file")
	flag.Parse()
	if err := write(*out, *n); err != nil {
		fmt.Fprintln(os.Stderr, "mixgen:", err)
		os.Exit(1)
	}
}

func write(path string, instances int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cert := func(serial string) *meshcav1.Cert {
		spki := sha256.Sum256([]byte("key-" + serial))
		return &meshcav1.Cert{
			Serial: serial, SpkiSha256: spki[:], IssuerId: "issuer-1",
			NotBefore: now.Add(-time.Minute).UnixNano(), NotAfter: now.Add(24 * time.Hour).UnixNano(),
			Purposes: []meshcav1.Purpose{meshcav1.Purpose_PURPOSE_CLIENT_AUTH},
		}
	}
	for i := range instances {
		inst := fmt.Sprintf("pod-%d.ns.cluster-a", i)
		serial := func(j int) string { return fmt.Sprintf("1%08x%02x", i, j) }
		for j := range 4 {
			cmd := &meshcav1.Command{Version: 1, Id: "cmd-" + serial(j), Time: now.UnixNano()}
			if j == 0 {
				cmd.Command = &meshcav1.Command_RecordRegister{RecordRegister: &meshcav1.RecordRegisterCommand{
					Provider: "sys.auth.k8s", Domain: "sports", Service: "api", InstanceId: inst,
					Cert: cert(serial(0)), ClientAddr: "10.0.0.1:5000", Hostname: "node-1",
				}}
			} else {
				cmd.Command = &meshcav1.Command_RecordRefresh{RecordRefresh: &meshcav1.RecordRefreshCommand{
					Provider: "sys.auth.k8s", Domain: "sports", Service: "api", InstanceId: inst,
					PresentedSerial: serial(j - 1), Cert: cert(serial(j)), ClientAddr: "10.0.0.1:5001",
				}}
			}
			b, err := proto.Marshal(cmd)
			if err != nil {
				return err
			}
			w.Write(binary.AppendUvarint(nil, uint64(len(b))))
			w.Write(b)
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
