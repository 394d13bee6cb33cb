//go:build !unix

package main

import (
	"context"
	"errors"
	"flag"
)

// devCommands are `meshctl dev up` and `meshctl dev down`, which need a Unix system: the
// agent serves on Unix sockets and the processes are managed by process group.
func devCommands() []*command {
	unsupported := func(*flag.FlagSet) runFunc {
		return func(context.Context, *invocation, []string) error {
			return errors.New("meshctl dev runs on Unix systems only")
		}
	}
	return []*command{
		{path: "dev up", summary: "start a local cluster (Unix only)", maxArgs: -1, noClient: true, setup: unsupported},
		{path: "dev down", summary: "stop the local cluster (Unix only)", maxArgs: -1, noClient: true, setup: unsupported},
	}
}
