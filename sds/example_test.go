package sds_test

import (
	"context"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/meshca/meshca/sds"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
)

// An agent wires one Store to SDS, the Workload API, files and an admin socket. It feeds the
// Store with SetSVID and SetBundle as it registers, rotates and streams bundles from the CA.
func Example() {
	ctx := context.Background()
	store := sds.NewStore()
	api := spiffeid.RequireFromString("spiffe://mesh.example/ns/sports/sa/api")
	callers := &sds.CallerTable{ByUID: map[uint32]spiffeid.ID{1337: api}}

	sdsServer, err := sds.NewSDSServer(sds.SDSConfig{Source: store, Resolver: callers, Registerer: prometheus.DefaultRegisterer})
	if err != nil {
		log.Fatal(err)
	}
	workloadAPI, err := sds.NewWorkloadAPI(sds.WorkloadAPIConfig{Source: store, Resolver: callers})
	if err != nil {
		log.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(sds.PeerCredentials()))
	sdsServer.Register(g)
	workloadAPI.Register(g)
	go func() { _ = sdsServer.Run(ctx) }()

	dir, _ := os.MkdirTemp("", "agent")
	lis, err := net.Listen("unix", dir+"/sds.sock")
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()

	files := &sds.FileWriter{Source: store, ID: api, Dir: dir + "/api"}
	go func() { _ = files.Run(ctx) }()

	admin, err := net.Listen("unix", dir+"/admin.sock")
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/secrets", sds.InventoryHandler(store))
	go func() { _ = http.Serve(admin, mux) }()
}
