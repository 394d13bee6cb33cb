//go:build unix

package controlplane

import (
	"net"
	"strings"
	"syscall"
	"testing"
)

// TestGRPCListenerLeavesTCPKeepaliveOff pins down that the gRPC port's accepted connections
// carry no TCP keepalive, which the gRPC keepalive makes redundant, while a plain listener's
// do: the check would not tell the two apart otherwise.
func TestGRPCListenerLeavesTCPKeepaliveOff(t *testing.T) {
	keepalive := func(ln net.Listener) int {
		t.Helper()
		defer ln.Close()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		conn, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		raw, err := conn.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var serr error
		if err := raw.Control(func(fd uintptr) { v, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) }); err != nil {
			t.Fatal(err)
		}
		if serr != nil {
			t.Fatal(serr)
		}
		return v
	}
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if v := keepalive(plain); v == 0 {
		t.Fatalf("a plain listener's connection has SO_KEEPALIVE %d; this check cannot see the difference", v)
	}
	grpcLn, err := listenGRPC("listen.grpc", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if v := keepalive(grpcLn); v != 0 {
		t.Errorf("listen.grpc's connection has SO_KEEPALIVE %d, want 0", v)
	}
	if _, err := listenGRPC("listen.grpc", "127.0.0.1:notaport"); err == nil || !strings.HasPrefix(err.Error(), "listen.grpc: ") {
		t.Errorf("bad address: error %v, want one naming listen.grpc", err)
	}
}
