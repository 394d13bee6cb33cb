package raftstore

import (
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// The commands every issuance makes, RecordRegister and RecordRefresh, are decoded and their
// results encoded by the code vtprotobuf generates (api/meshca/v1/state_vtproto.pb.go), about
// twice as fast as the reflective protobuf runtime and with fewer allocations: on three nodes
// sharing two cores, every node decoding every command was a quarter of the state machine's
// time. That generated decoder does not check that strings are UTF-8, which the protobuf
// runtime does and the state relies on (a stored string that is not UTF-8 could never be
// marshaled into a snapshot again), so those two commands have their strings checked here, and
// every other input is decoded by the protobuf runtime as before: what a command decodes to,
// and which bytes are refused with which error, does not depend on the path taken.

// decodeCommand decodes a marshaled meshca.v1.Command as proto.Unmarshal does.
//
// The generated decoder's answer is taken only when the bytes are as long as the decoded
// command's encoding: then no field occurred twice (a later occurrence replaces or merges into
// an earlier one, and what it drops is at least a tag and a length, 2 bytes, where the only
// encoding shorter than ours, a lone repeated enum value not packed, saves 1), so every string
// on the wire is one fastPathUTF8 checks. FuzzDecodeCommand holds both decoders to the same
// answers.
func decodeCommand(data []byte) (*meshcav1.Command, error) {
	cmd := new(meshcav1.Command)
	if err := cmd.UnmarshalVT(data); err == nil && cmd.SizeVT() == len(data) && fastPathUTF8(cmd) {
		return cmd, nil
	}
	cmd = new(meshcav1.Command)
	if err := proto.Unmarshal(data, cmd); err != nil {
		return nil, err
	}
	return cmd, nil
}

// fastPathUTF8 reports whether cmd is a RecordRegister or RecordRefresh whose every string is
// UTF-8; false sends the bytes to the protobuf runtime. TestFastPathChecksEveryString keeps
// the list complete.
func fastPathUTF8(cmd *meshcav1.Command) bool {
	if !utf8.ValidString(cmd.GetId()) {
		return false
	}
	switch c := cmd.GetCommand().(type) {
	case *meshcav1.Command_RecordRegister:
		r := c.RecordRegister
		return validUTF8(r.GetProvider(), r.GetDomain(), r.GetService(), r.GetInstanceId(), r.GetClientAddr(),
			r.GetHostname(), r.GetTokenJti()) && certUTF8(r.GetCert())
	case *meshcav1.Command_RecordRefresh:
		r := c.RecordRefresh
		return validUTF8(r.GetProvider(), r.GetDomain(), r.GetService(), r.GetInstanceId(), r.GetPresentedSerial(),
			r.GetClientAddr(), r.GetHostname()) && certUTF8(r.GetCert())
	}
	return false
}

func certUTF8(c *meshcav1.Cert) bool {
	return validUTF8(c.GetSerial(), c.GetIdentity(), c.GetInstance(), c.GetIssuerId(), c.GetCsrRequest())
}

func validUTF8(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}
