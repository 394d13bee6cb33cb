package controlplane

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// ClusterStatus answers the hash of the node's replicated state only when asked, and the hash
// is the state machine's own for the applied index it names, so replicas can be compared
// over the network; a change committed through the log changes it.
func TestAdminClusterStatusStateHash(t *testing.T) {
	e := newAdminEnv(t)
	ctx := e.ctx()
	robot := e.as(robotAdmin)

	plain, err := robot.ClusterStatus(ctx, &meshcav1.ClusterStatusRequest{})
	ok(t, err)
	if len(plain.GetStateHash()) != 0 || plain.GetStateAppliedIndex() != 0 {
		t.Fatalf("a status that did not ask for the hash carries one: %x at %d", plain.GetStateHash(), plain.GetStateAppliedIndex())
	}

	// hashed asks for the hash until the answer's index is the local state's, then checks it
	// against the state machine's hash of that state.
	hashed := func() *meshcav1.ClusterStatusResponse {
		t.Helper()
		var out *meshcav1.ClusterStatusResponse
		waitFor(t, "a state hash at the local applied index", func() error {
			st, err := robot.ClusterStatus(ctx, &meshcav1.ClusterStatusRequest{StateHash: true})
			if err != nil {
				return err
			}
			local := e.s.Store().State()
			if local.AppliedIndex() != st.GetStateAppliedIndex() {
				return fmt.Errorf("answer at index %d, local state at %d", st.GetStateAppliedIndex(), local.AppliedIndex())
			}
			want := local.Hash()
			if !bytes.Equal(st.GetStateHash(), want[:]) {
				t.Fatalf("state hash %x at index %d, the state machine's is %x", st.GetStateHash(), st.GetStateAppliedIndex(), want)
			}
			if st.GetStateAppliedIndex() == 0 {
				return errors.New("applied index 0")
			}
			out = st
			return nil
		})
		return out
	}
	before := hashed()
	_, err = robot.PutDomain(ctx, &meshcav1.PutDomainRequest{Domain: &meshcav1.Domain{Name: "weather"}, Mode: meshcav1.PutMode_PUT_MODE_CREATE})
	ok(t, err)
	after := hashed()
	if after.GetStateAppliedIndex() <= before.GetStateAppliedIndex() || bytes.Equal(after.GetStateHash(), before.GetStateHash()) {
		t.Fatalf("after a committed change: hash %x at %d, before: %x at %d",
			after.GetStateHash(), after.GetStateAppliedIndex(), before.GetStateHash(), before.GetStateAppliedIndex())
	}
}
