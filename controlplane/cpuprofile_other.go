//go:build !unix

package controlplane

import "context"

// CPUProfileEnv is the unix-only profiling switch; without SIGUSR1 and SIGUSR2 it does nothing.
const CPUProfileEnv = "MESHCA_CPUPROFILE"

// profileOnSignal does nothing where there are no user signals.
func (s *Server) profileOnSignal(context.Context) {}
