//go:build unix

package controlplane

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// CPUProfileEnv names the environment variable that lets benchmarks profile one process of a
// cluster of real processes: when it is set to a path prefix, SIGUSR1 starts a CPU profile and
// SIGUSR2 writes it to <prefix>.<pid> (and what the process allocated since it started to
// <prefix>.<pid>.allocs). Unset, the signals are not caught.
const CPUProfileEnv = "MESHCA_CPUPROFILE"

// profileOnSignal serves CPUProfileEnv until ctx ends, writing a profile still running then.
func (s *Server) profileOnSignal(ctx context.Context) {
	prefix := os.Getenv(CPUProfileEnv)
	if prefix == "" {
		return
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	var f *os.File
	stop := func() {
		if f == nil {
			return
		}
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			s.log.Error("cpu profile", "path", f.Name(), "error", err)
		}
		s.log.Info("cpu profile written", "path", f.Name())
		if af, err := os.Create(f.Name() + ".allocs"); err == nil {
			_ = pprof.Lookup("allocs").WriteTo(af, 0)
			af.Close()
		}
		f = nil
	}
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case sig := <-sigs:
			if sig == syscall.SIGUSR2 {
				stop()
				continue
			}
			if f != nil {
				continue
			}
			path := fmt.Sprintf("%s.%d", prefix, os.Getpid())
			var err error
			if f, err = os.Create(path); err != nil {
				s.log.Error("cpu profile", "path", path, "error", err)
				f = nil
				continue
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				s.log.Error("cpu profile", "path", path, "error", err)
				f.Close()
				f = nil
			}
		}
	}
}
