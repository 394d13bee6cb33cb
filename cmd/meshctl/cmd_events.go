package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// eventKinds maps the --kind names to kinds.
var eventKinds = func() map[string]meshcav1.EventKind {
	m := map[string]meshcav1.EventKind{}
	for v := range meshcav1.EventKind_name {
		if k := meshcav1.EventKind(v); k != meshcav1.EventKind_EVENT_KIND_UNSPECIFIED {
			m[enumName(k, "EVENT_KIND_")] = k
		}
	}
	return m
}()

func kindNames() string {
	var names []string
	for n := range eventKinds {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func eventCommands() []*command {
	return []*command{
		{path: "events watch", summary: "stream audit events as they are committed (Ctrl-C stops)", maxArgs: 0, stream: true,
			setup: func(fs *flag.FlagSet) runFunc {
				from := fs.Uint64("from", 0, "replay the retained events from this index first (0: only new events)")
				count := fs.Int("count", 0, "stop after this many events (0: run until interrupted)")
				var kinds stringList
				fs.Var(&kinds, "kind", "only events of this kind; repeatable: "+kindNames())
				return func(ctx context.Context, inv *invocation, _ []string) error {
					req := &meshcav1.WatchEventsRequest{FromIndex: *from}
					for _, k := range kinds {
						kind, ok := eventKinds[k]
						if !ok {
							return usageError("--kind %q is not one of %s", k, kindNames())
						}
						req.Kinds = append(req.Kinds, kind)
					}
					c, err := inv.admin()
					if err != nil {
						return err
					}
					stream, err := c.WatchEvents(ctx, req)
					if err != nil {
						return err
					}
					w := inv.app.stdout
					if inv.settings.output == outputTable {
						fmt.Fprintf(w, "%-8s %-20s %-22s %-50s %s\n", "INDEX", "TIME", "KIND", "SUBJECT", "SERIAL / DETAIL")
					}
					for n := 0; *count == 0 || n < *count; n++ {
						ev, err := stream.Recv()
						switch {
						case errors.Is(err, io.EOF):
							return nil
						case status.Code(err) == codes.Canceled && ctx.Err() != nil:
							return nil // interrupted
						case err != nil:
							return err
						}
						if inv.settings.output == outputJSON {
							b, err := streamJSONOptions.Marshal(ev)
							if err != nil {
								return err
							}
							fmt.Fprintf(w, "%s\n", b)
							continue
						}
						fmt.Fprintf(w, "%-8d %-20s %-22s %-50s %s\n", ev.GetIndex(), nanos(ev.GetTime()),
							enumName(ev.GetKind(), "EVENT_KIND_"), ev.GetSubject(), strings.TrimSpace(ev.GetSerial()+" "+ev.GetDetail()))
					}
					return nil
				}
			}},
	}
}
