package sds

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestWorkloadAPIX509SourceSeesRotation(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	fed := newTestCA(t, tdFed.Name())
	store := NewStore()
	mustSetBundle(t, store, ca)
	mustSetBundle(t, store, fed)
	first := ca.issue(t, idAPI)
	mustSetSVID(t, store, first)
	srv := startServer(t, store, byUID(idAPI))

	ctx := streamCtx(t)
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+srv.sock)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != idAPI || leafSerial(svid) != leafSerial(first) {
		t.Fatalf("source holds %v serial %s, want %v serial %s", svid.ID, leafSerial(svid), idAPI, leafSerial(first))
	}
	if _, err := src.GetX509BundleForTrustDomain(tdFed); err != nil {
		t.Fatalf("federated bundle: %v", err)
	}

	next := ca.issue(t, idAPI)
	mustSetSVID(t, store, next)
	for {
		if err := src.WaitUntilUpdated(ctx); err != nil {
			t.Fatalf("waiting for the rotation: %v", err)
		}
		svid, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		if leafSerial(svid) == leafSerial(next) {
			break
		}
	}
}

func TestWorkloadAPIFetchX509BundlesStreamsChanges(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	fed := newTestCA(t, tdFed.Name())
	store := NewStore()
	mustSetBundle(t, store, ca)
	srv := startServer(t, store, byUID(idAPI))

	client, err := workloadapi.New(streamCtx(t), workloadapi.WithAddr("unix://"+srv.sock))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	got := make(chan []spiffeid.TrustDomain, 4)
	ctx, cancel := context.WithCancel(streamCtx(t))
	done := make(chan error, 1)
	go func() {
		done <- client.WatchX509Bundles(ctx, bundleWatcher(func(tds []spiffeid.TrustDomain) { got <- tds }))
	}()
	defer func() {
		cancel()
		<-done
	}()
	if tds := <-got; len(tds) != 1 || tds[0] != ca.td {
		t.Fatalf("first bundles %v, want [%v]", tds, ca.td)
	}
	mustSetBundle(t, store, fed)
	if tds := <-got; len(tds) != 2 {
		t.Fatalf("after federating: bundles %v, want own and %v", tds, tdFed)
	}
	store.RemoveBundle(tdFed)
	if tds := <-got; len(tds) != 1 || tds[0] != ca.td {
		t.Fatalf("after removing the federated bundle: %v, want [%v]", tds, ca.td)
	}
}

type bundleWatcher func([]spiffeid.TrustDomain)

func (f bundleWatcher) OnX509BundlesUpdate(set *x509bundle.Set) {
	var tds []spiffeid.TrustDomain
	for _, b := range set.Bundles() {
		tds = append(tds, b.TrustDomain())
	}
	f(tds)
}

func (f bundleWatcher) OnX509BundlesWatchError(error) {}

func TestWorkloadAPIRefusals(t *testing.T) {
	ca := newTestCA(t, tdMesh)
	store := NewStore()
	mustSetBundle(t, store, ca)
	mustSetSVID(t, store, ca.issue(t, idAPI))
	mapped := startServer(t, store, byUID(idAPI))
	unmapped := startServer(t, store, func(map[string]string) *CallerTable {
		return &CallerTable{ByUID: map[uint32]spiffeid.ID{uint32(os.Getuid()) + 1: idAPI}}
	})
	withHeader := func(t *testing.T) context.Context {
		return metadata.AppendToOutgoingContext(streamCtx(t), "workload.spiffe.io", "true")
	}
	cases := []struct {
		rule string
		sock string
		ctx  func(*testing.T) context.Context
		call func(context.Context, workload.SpiffeWorkloadAPIClient) error
		want codes.Code
	}{
		{"a call without the security header is InvalidArgument", mapped.sock, streamCtx, recvX509SVID, codes.InvalidArgument},
		{"an unmapped uid gets PermissionDenied for SVIDs", unmapped.sock, withHeader, recvX509SVID, codes.PermissionDenied},
		{"an unmapped uid gets PermissionDenied for bundles", unmapped.sock, withHeader, func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
			st, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}, codes.PermissionDenied},
		{"JWT-SVIDs are Unimplemented", mapped.sock, withHeader, func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
			_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"x"}})
			return err
		}, codes.Unimplemented},
		{"JWT validation is Unimplemented", mapped.sock, withHeader, func(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
			_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "x", Svid: "y"})
			return err
		}, codes.Unimplemented},
	}
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			c := workload.NewSpiffeWorkloadAPIClient(dial(t, tc.sock))
			if err := tc.call(tc.ctx(t), c); status.Code(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func recvX509SVID(ctx context.Context, c workload.SpiffeWorkloadAPIClient) error {
	st, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return err
	}
	_, err = st.Recv()
	return err
}

func TestWorkloadAPIConfigNamesTheMissingField(t *testing.T) {
	_, err := NewWorkloadAPI(WorkloadAPIConfig{Resolver: &CallerTable{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "Source") {
		t.Fatalf("err = %v, want one naming Source", err)
	}
	_, err = NewSDSServer(SDSConfig{Source: NewStore()})
	if err == nil || !strings.Contains(err.Error(), "Resolver") {
		t.Fatalf("err = %v, want one naming Resolver", err)
	}
}
