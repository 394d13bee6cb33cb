package sds

import (
	"fmt"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// namesPlus is NameDefault followed by unknown names, n in all.
func namesPlus(n int) []string {
	out := []string{NameDefault}
	for i := 1; i < n; i++ {
		out = append(out, fmt.Sprint("unknown-", i))
	}
	return out
}

func TestSDSRefusesARequestNamingMoreThanMaxResourceNames(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	mustSetSVID(t, store, ca.issue(t, idAPI))
	srv := startServer(t, store, byUID(idAPI))
	client := sdsClient(t, srv.sock)
	over := namesPlus(DefaultMaxResourceNames + 1)
	wantRefused := func(t *testing.T, err error) {
		t.Helper()
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("error %v, want ResourceExhausted", err)
		}
	}

	t.Run("a state-of-the-world request at the limit is served", func(t *testing.T) {
		st := openSotW(t, client)
		st.subscribe(namesPlus(DefaultMaxResourceNames)...)
		if got := sotwSecrets(t, st.recv()); !sameNames(got, NameDefault) {
			t.Fatalf("names %v, want default", names(got))
		}
	})
	t.Run("a state-of-the-world request over the limit ends the stream", func(t *testing.T) {
		st, err := client.StreamSecrets(streamCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, Node: envoyNode("sidecar"), ResourceNames: over}); err != nil {
			t.Fatal(err)
		}
		_, err = st.Recv()
		wantRefused(t, err)
	})
	t.Run("a delta subscription over the limit ends the stream", func(t *testing.T) {
		st, err := client.DeltaSecrets(streamCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.SecretType, Node: envoyNode("sidecar"), ResourceNamesSubscribe: over}); err != nil {
			t.Fatal(err)
		}
		_, err = st.Recv()
		wantRefused(t, err)
	})
	t.Run("a fetch over the limit is refused", func(t *testing.T) {
		_, err := client.FetchSecrets(streamCtx(t), &discovery.DiscoveryRequest{Node: envoyNode("sidecar"), ResourceNames: over})
		wantRefused(t, err)
	})
}

func TestSDSConfigMaxResourceNamesIsNotNegative(t *testing.T) {
	err := SDSConfig{Source: NewStore(), Resolver: &CallerTable{}, MaxResourceNames: -1}.Validate()
	if err == nil {
		t.Fatal("a negative MaxResourceNames was accepted")
	}
}
