package raftstore

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// A snapshot is a stream of length-delimited SnapshotRecord messages (a uvarint byte count,
// then the message: the format of google.golang.org/protobuf/encoding/protodelim): a header,
// the counters, the CA, then every record table by table in key order (command receipts in
// sequence order), then a trailer with the
// record count and the SHA-256 of the framed records between header and trailer. That SHA-256
// is the state hash: the same state always gives the same bytes.

// snapshotFormat is the stream format this release writes and reads.
const snapshotFormat = 1

// maxSnapshotRecord bounds one record, so a corrupt length cannot make Restore allocate
// without limit.
const maxSnapshotRecord = 64 << 20

// ErrCorruptSnapshot is returned by Restore for a stream that is not a complete snapshot.
var ErrCorruptSnapshot = errors.New("raftstore: corrupt snapshot")

// recordWriter frames records onto w, reusing one buffer.
type recordWriter struct {
	w   io.Writer
	buf []byte
}

var (
	sizeOptions    = proto.MarshalOptions{Deterministic: true}
	marshalOptions = proto.MarshalOptions{Deterministic: true, UseCachedSize: true}
)

func (rw *recordWriter) write(rec *meshcav1.SnapshotRecord) error {
	size := sizeOptions.Size(rec)
	buf := binary.AppendUvarint(rw.buf[:0], uint64(size))
	buf, err := marshalOptions.MarshalAppend(buf, rec)
	if err != nil {
		return fmt.Errorf("marshal snapshot record: %w", err)
	}
	rw.buf = buf
	if _, err := rw.w.Write(buf); err != nil {
		return fmt.Errorf("write snapshot record: %w", err)
	}
	return nil
}

// walkTable emits every record of a table in key order, wrapped by wrap.
func walkTable[K string | uint64, V any](t *table[K, V], emit func(*meshcav1.SnapshotRecord) error, wrap func(V) *meshcav1.SnapshotRecord) (uint64, error) {
	var n uint64
	var err error
	t.scan(func(_ K, v V) bool {
		if err = emit(wrap(v)); err != nil {
			return false
		}
		n++
		return true
	})
	return n, err
}

// walkRecords emits the whole state in canonical order and returns the record count.
func walkRecords(s *State, emit func(*meshcav1.SnapshotRecord) error) (uint64, error) {
	counters := &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Counters{Counters: &meshcav1.StateCounters{
		NextEventIndex: s.nextEvent, NextReceiptSequence: s.nextReceipt,
	}}}
	if err := emit(counters); err != nil {
		return 0, err
	}
	total := uint64(1)
	if s.ca != nil {
		if err := emit(&meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Ca{Ca: s.ca}}); err != nil {
			return total, err
		}
		total++
	}
	steps := []func() (uint64, error){
		func() (uint64, error) {
			return walkTable(&s.domains, emit, func(v *meshcav1.Domain) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Domain{Domain: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.services, emit, func(v *meshcav1.Service) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Service{Service: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.providers, emit, func(v *meshcav1.Provider) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Provider{Provider: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.instances, emit, func(v *meshcav1.Instance) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Instance{Instance: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.certs, emit, func(v *meshcav1.Cert) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Cert{Cert: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.keyUses, emit, func(v *meshcav1.KeyUse) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_KeyUse{KeyUse: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.revocations, emit, func(v *meshcav1.Revocation) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Revocation{Revocation: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.issuerUses, emit, func(v *meshcav1.IssuerUse) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_IssuerUse{IssuerUse: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.federations, emit, func(v *meshcav1.Federation) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Federation{Federation: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.tokens, emit, func(v *meshcav1.Token) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Token{Token: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.nonces, emit, func(v *meshcav1.Nonce) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Nonce{Nonce: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.csrRequests, emit, func(v *meshcav1.CSRRequest) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_CsrRequest{CsrRequest: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.events, emit, func(v *meshcav1.Event) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Event{Event: v}}
			})
		},
		func() (uint64, error) {
			return walkTable(&s.receipts, emit, func(v *meshcav1.CommandReceipt) *meshcav1.SnapshotRecord {
				return &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Receipt{Receipt: v}}
			})
		},
	}
	for _, step := range steps {
		n, err := step()
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// Hash is the SHA-256 of the state's canonical serialization: every record in table and key
// order (the body of a snapshot). Two replicas that applied the same log have the same hash.
func (s *State) Hash() [sha256.Size]byte {
	h := sha256.New()
	rw := &recordWriter{w: h}
	if _, err := walkRecords(s, rw.write); err != nil {
		// Writing to a hash cannot fail and every record marshals; reaching this is a bug.
		panic(fmt.Sprintf("raftstore: hashing state: %v", err))
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// WriteSnapshot streams the state to w record by record (no buffer holds the whole state).
func (s *State) WriteSnapshot(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	head := &recordWriter{w: bw}
	header := &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Header{Header: &meshcav1.SnapshotHeader{
		Format: snapshotFormat, AppliedIndex: s.appliedIndex,
	}}}
	if err := head.write(header); err != nil {
		return err
	}
	h := sha256.New()
	body := &recordWriter{w: io.MultiWriter(bw, h)}
	n, err := walkRecords(s, body.write)
	if err != nil {
		return err
	}
	trailer := &meshcav1.SnapshotRecord{Record: &meshcav1.SnapshotRecord_Trailer{Trailer: &meshcav1.SnapshotTrailer{
		Records: n, Sha256: h.Sum(nil),
	}}}
	if err := head.write(trailer); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}

// recordReader reads framed records, keeping the framed bytes of the last one for hashing.
type recordReader struct {
	r   *bufio.Reader
	buf []byte
}

// next reads one framed record into rec; io.EOF means the stream ended cleanly between records.
func (rr *recordReader) next(rec *meshcav1.SnapshotRecord) (framed []byte, err error) {
	size, err := binary.ReadUvarint(rr.r)
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		return nil, fmt.Errorf("%w: record length: %w", ErrCorruptSnapshot, err)
	}
	if size > maxSnapshotRecord {
		return nil, fmt.Errorf("%w: record of %d bytes exceeds the %d-byte limit", ErrCorruptSnapshot, size, maxSnapshotRecord)
	}
	buf := binary.AppendUvarint(rr.buf[:0], size)
	prefix := len(buf)
	buf = slices.Grow(buf, int(size))[:prefix+int(size)]
	if _, err := io.ReadFull(rr.r, buf[prefix:]); err != nil {
		return nil, fmt.Errorf("%w: record of %d bytes: %w", ErrCorruptSnapshot, size, err)
	}
	rr.buf = buf
	if err := proto.Unmarshal(buf[prefix:], rec); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorruptSnapshot, err)
	}
	return buf, nil
}

// stateBuilder fills the tables of a state being restored, in place: the state is not shared
// until the builder hands it over.
type stateBuilder struct {
	s           *State
	w           *writerState // the derived indexes, filled alongside
	sawCounters bool
}

func newStateBuilder() *stateBuilder { return &stateBuilder{s: emptyState(), w: newWriterState()} }

// add files one record; the derived indexes are filled alongside.
func (b *stateBuilder) add(rec *meshcav1.SnapshotRecord) error {
	switch r := rec.GetRecord().(type) {
	case *meshcav1.SnapshotRecord_Counters:
		if b.sawCounters {
			return fmt.Errorf("%w: counters twice", ErrCorruptSnapshot)
		}
		b.sawCounters = true
		b.s.nextEvent, b.s.nextReceipt = r.Counters.GetNextEventIndex(), r.Counters.GetNextReceiptSequence()
	case *meshcav1.SnapshotRecord_Ca:
		if b.s.ca != nil {
			return fmt.Errorf("%w: CA record twice", ErrCorruptSnapshot)
		}
		b.s.ca = r.Ca
	case *meshcav1.SnapshotRecord_Domain:
		b.s.domains.load(r.Domain.GetName(), r.Domain)
	case *meshcav1.SnapshotRecord_Service:
		b.s.services.load(Identity(r.Service.GetDomain(), r.Service.GetName()), r.Service)
	case *meshcav1.SnapshotRecord_Provider:
		b.s.providers.load(r.Provider.GetName(), r.Provider)
	case *meshcav1.SnapshotRecord_Instance:
		b.s.instances.load(instanceSlot(r.Instance.GetProvider(), r.Instance.GetInstanceId()), r.Instance)
	case *meshcav1.SnapshotRecord_Cert:
		b.s.certs.load(r.Cert.GetSerial(), r.Cert)
		b.w.certExpiry.load(expiryKey(r.Cert.GetNotAfter(), r.Cert.GetSerial()), struct{}{})
	case *meshcav1.SnapshotRecord_KeyUse:
		b.s.keyUses.load(string(r.KeyUse.GetSpkiSha256()), r.KeyUse)
	case *meshcav1.SnapshotRecord_Revocation:
		b.s.revocations.load(r.Revocation.GetSerial(), r.Revocation)
	case *meshcav1.SnapshotRecord_IssuerUse:
		b.s.issuerUses.load(r.IssuerUse.GetIssuerId(), r.IssuerUse)
	case *meshcav1.SnapshotRecord_Federation:
		b.s.federations.load(r.Federation.GetTrustDomain(), r.Federation)
	case *meshcav1.SnapshotRecord_Token:
		b.s.tokens.load(r.Token.GetJti(), r.Token)
		b.w.tokenExpiry.load(expiryKey(r.Token.GetExpires(), r.Token.GetJti()), struct{}{})
	case *meshcav1.SnapshotRecord_Nonce:
		k := nonceKey(r.Nonce.GetScope(), r.Nonce.GetNonce())
		b.s.nonces.load(k, r.Nonce)
		b.w.nonceExpiry.load(expiryKey(r.Nonce.GetExpires(), k), struct{}{})
	case *meshcav1.SnapshotRecord_CsrRequest:
		b.s.csrRequests.load(r.CsrRequest.GetId(), r.CsrRequest)
	case *meshcav1.SnapshotRecord_Event:
		b.s.events.load(r.Event.GetIndex(), r.Event)
	case *meshcav1.SnapshotRecord_Receipt:
		b.s.receipts.load(r.Receipt.GetSequence(), r.Receipt)
		b.s.receiptBytes += len(r.Receipt.GetResult())
	default:
		return fmt.Errorf("%w: unexpected record %T", ErrCorruptSnapshot, r)
	}
	return nil
}

func (b *stateBuilder) state() (*State, *writerState, error) {
	if !b.sawCounters {
		return nil, nil, fmt.Errorf("%w: no counters record", ErrCorruptSnapshot)
	}
	return b.s, b.w, nil
}

// ReadSnapshot reads a snapshot stream written by WriteSnapshot back into a state. It checks
// the format, the record count and the SHA-256 in the trailer, and that nothing follows it.
func ReadSnapshot(r io.Reader) (*State, error) {
	s, _, err := readSnapshot(r)
	return s, err
}

// readSnapshot reads a snapshot stream into a frozen state and the derived indexes of its
// records.
func readSnapshot(r io.Reader) (*State, *writerState, error) {
	rr := &recordReader{r: bufio.NewReaderSize(r, 1<<20)}
	first := new(meshcav1.SnapshotRecord)
	if _, err := rr.next(first); err != nil {
		if err == io.EOF {
			return nil, nil, fmt.Errorf("%w: empty stream", ErrCorruptSnapshot)
		}
		return nil, nil, err
	}
	header := first.GetHeader()
	if header == nil {
		return nil, nil, fmt.Errorf("%w: stream does not start with a header", ErrCorruptSnapshot)
	}
	if header.GetFormat() != snapshotFormat {
		return nil, nil, fmt.Errorf("%w: format %d, this release reads format %d", ErrCorruptSnapshot, header.GetFormat(), snapshotFormat)
	}
	b := newStateBuilder()
	b.s.appliedIndex = header.GetAppliedIndex()
	h := sha256.New()
	var count uint64
	for {
		rec := new(meshcav1.SnapshotRecord)
		framed, err := rr.next(rec)
		if err == io.EOF {
			return nil, nil, fmt.Errorf("%w: stream ends after %d records without a trailer", ErrCorruptSnapshot, count)
		}
		if err != nil {
			return nil, nil, err
		}
		if t := rec.GetTrailer(); t != nil {
			if t.GetRecords() != count {
				return nil, nil, fmt.Errorf("%w: trailer counts %d records, stream has %d", ErrCorruptSnapshot, t.GetRecords(), count)
			}
			if sum := h.Sum(nil); !bytes.Equal(sum, t.GetSha256()) {
				return nil, nil, fmt.Errorf("%w: records hash to %x, trailer says %x", ErrCorruptSnapshot, sum, t.GetSha256())
			}
			if _, err := rr.r.ReadByte(); err != io.EOF {
				return nil, nil, fmt.Errorf("%w: data after the trailer", ErrCorruptSnapshot)
			}
			return b.state()
		}
		if rec.GetHeader() != nil {
			return nil, nil, fmt.Errorf("%w: second header at record %d", ErrCorruptSnapshot, count)
		}
		h.Write(framed)
		count++
		if err := b.add(rec); err != nil {
			return nil, nil, err
		}
	}
}
