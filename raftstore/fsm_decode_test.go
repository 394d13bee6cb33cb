package raftstore

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// stringFields calls fn with a setter for every string field of m and of the messages it
// holds (set to a placeholder first, so they are on the wire).
func stringFields(m protoreflect.Message, fn func(name string, set func(string))) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsList() || fd.IsMap():
			if fd.Kind() == protoreflect.StringKind || fd.Kind() == protoreflect.MessageKind {
				panic("stringFields: repeated string or message field " + string(fd.FullName()) + ": extend this test and fastPathUTF8")
			}
		case fd.Kind() == protoreflect.StringKind:
			fn(string(fd.FullName()), func(s string) { m.Set(fd, protoreflect.ValueOfString(s)) })
		case fd.Kind() == protoreflect.MessageKind && (fd.ContainingOneof() == nil || m.Has(fd)):
			// Of a oneof, only the member the command holds.
			stringFields(m.Mutable(fd).Message(), fn)
		}
	}
}

// TestFastPathChecksEveryString puts bytes that are not UTF-8 in each string field of the
// commands the generated decoder takes, in turn: every one must be refused as proto.Unmarshal
// refuses it. A string field added to these messages is covered without a change here.
func TestFastPathChecksEveryString(t *testing.T) {
	fx := newFSMFixture(t)
	const marker = "\u00a7\u00a7" // two 2-byte characters, replaced on the wire by 0xff bytes
	bodies := []proto.Message{fx.register(fxInstance1, "a1", "k1"), fx.refresh(fxInstance1, "a1", "a2", "k2")}
	checked := 0
	for _, body := range bodies {
		cmd := fx.cmd(body)
		var names []string
		stringFields(cmd.ProtoReflect(), func(name string, _ func(string)) { names = append(names, name) })
		for _, name := range names {
			c := proto.Clone(cmd).(*meshcav1.Command)
			stringFields(c.ProtoReflect(), func(n string, set func(string)) {
				if n == name {
					set(marker)
				}
			})
			data := mustMarshal(t, c)
			if bytes.Count(data, []byte(marker)) != 1 {
				t.Fatalf("%s: the marker is not on the wire once", name)
			}
			data = bytes.Replace(data, []byte(marker), []byte{0xff, 0xff, 0xff, 0xff}, 1)
			_, err := decodeCommand(data)
			want := proto.Unmarshal(data, new(meshcav1.Command))
			if err == nil || want == nil || err.Error() != want.Error() {
				t.Errorf("%T %s not UTF-8: decodeCommand error %v, proto.Unmarshal error %v", body, name, err, want)
			}
			checked++
		}
	}
	if checked < 20 {
		t.Fatalf("checked %d string fields; the commands have more", checked)
	}
}

// FuzzDecodeCommand: whatever the bytes, decodeCommand decodes what proto.Unmarshal does, or
// fails as it fails.
func FuzzDecodeCommand(f *testing.F) {
	fx := newFSMFixture(f)
	f.Add([]byte{})
	f.Add([]byte{0x12, 0x02, 0xff, 0xfe})
	f.Add(mustMarshal(f, fx.cmd(fx.register(fxInstance1, "a1", "k1"))))
	f.Add(mustMarshal(f, fx.cmd(fx.refresh(fxInstance1, "a1", "a2", "k2"))))
	f.Add(mustMarshal(f, fx.cmd(&meshcav1.PutDomainCommand{Domain: &meshcav1.Domain{Name: "weather"}})))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeCommand(data)
		want := new(meshcav1.Command)
		werr := proto.Unmarshal(data, want)
		switch {
		case (err == nil) != (werr == nil):
			t.Fatalf("decodeCommand error %v, proto.Unmarshal error %v", err, werr)
		case err != nil:
			if err.Error() != werr.Error() {
				t.Fatalf("decodeCommand error %q, proto.Unmarshal error %q", err, werr)
			}
		case !proto.Equal(got, want):
			t.Fatalf("decodeCommand gave %v, proto.Unmarshal %v", got, want)
		}
	})
}
