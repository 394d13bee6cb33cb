package controlplane

import (
	"bytes"

	"google.golang.org/protobuf/proto"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore"
	"github.com/meshca/meshca/sds"
)

// issuerNotice is what agents are told about the CA record on their bundle stream: the active
// issuer and, after an activate with reissue, that certificates it did not sign are replaced now.
func issuerNotice(rec *meshcav1.CA) ([]byte, error) {
	active := rec.GetActiveIssuer()
	n := &meshcav1.IssuerNotice{IssuerId: active.GetId(), ReissueRequested: rec.GetReissueRequested()}
	if chain := active.GetChain(); len(chain) > 0 {
		n.IssuerCertificate = chain[0]
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(n)
}

// syncIssuerNotice keeps the notice served over SDS equal to the CA record's, changing it only
// when its content does, so agents are pushed one update per activate.
func (s *Server) syncIssuerNotice(st *raftstore.State) {
	rec, err := st.CA()
	if err != nil {
		return
	}
	data, err := issuerNotice(rec)
	if err != nil {
		s.log.Error("issuer notice not served", "error", err)
		return
	}
	if bytes.Equal(s.bundles.View(s.td.ID()).Generic[sds.NameIssuerNotice], data) {
		return
	}
	if err := s.bundles.SetGeneric(sds.NameIssuerNotice, data); err != nil {
		s.log.Error("issuer notice not served", "error", err)
	}
}
