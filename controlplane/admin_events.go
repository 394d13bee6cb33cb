package controlplane

import (
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore"
)

// watchBatch is how many events a stream reads from the state at a time.
const watchBatch = 256

// Close ends every open WatchEvents stream (UNAVAILABLE, so clients resume elsewhere) and makes
// new ones end at once. Call it when the server stops: a graceful gRPC stop waits for open
// streams, and a watch stream never ends by itself.
func (a *Admin) Close() { a.closeOnce.Do(func() { close(a.stop) }) }

// WatchEvents streams the events the caller may read: the retained ones from req.from_index,
// then each new one as the state machine applies it. It waits on the state machine's change
// notification, never on a timer.
func (a *Admin) WatchEvents(req *meshcav1.WatchEventsRequest, stream grpc.ServerStreamingServer[meshcav1.Event]) error {
	ctx := stream.Context()
	st := a.store.State()
	c, err := a.authorize(ctx, st, ActionEventWatch, Resource{Kind: "events", Name: "*"})
	if err != nil {
		return err
	}
	next := req.GetFromIndex()
	if next == 0 {
		next = st.LastEventIndex() + 1
	}
	kinds := req.GetKinds()
	for {
		// Take the notification before reading the state: a change between the two closes
		// the channel already taken, so no event is missed.
		changed := a.store.FSM().Changed()
		st := a.store.State()
		if err := a.stillValid(c, st); err != nil {
			return err
		}
		evs := st.Events(next, watchBatch)
		if len(evs) > 0 && evs[0].GetIndex() > next {
			return status.Errorf(codes.OutOfRange,
				"from_index: events %d to %d were pruned before they could be sent (bounded retention); resume from %d, or from 0 for new events only",
				next, evs[0].GetIndex()-1, evs[0].GetIndex())
		}
		if len(evs) == 0 && next <= st.LastEventIndex() {
			return status.Errorf(codes.OutOfRange,
				"from_index: events %d to %d were pruned (bounded retention); resume from %d, or from 0 for new events only",
				next, st.LastEventIndex(), st.LastEventIndex()+1)
		}
		admins := map[string][]string{}
		for _, ev := range evs {
			next = ev.GetIndex() + 1
			if len(kinds) > 0 && !slices.Contains(kinds, ev.GetKind()) {
				continue
			}
			if !a.eventVisible(st, c, ev, admins) {
				continue
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
		if len(evs) == watchBatch {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-a.stop:
			return status.Error(codes.Unavailable, "server: stopping; resume the watch on another node")
		}
	}
}

// stillValid ends a stream whose caller's certificate has since been revoked or has expired.
func (a *Admin) stillValid(c caller, st *raftstore.State) error {
	if st.IsRevoked(c.Serial) {
		return refuse(ErrClientCertRevoked, "client certificate", "serial %s was revoked", c.Serial)
	}
	if a.now().After(c.Leaf.NotAfter) {
		return refuse(ErrClientCertExpired, "client certificate", "serial %s expired during the watch; reconnect with a fresh certificate", c.Serial)
	}
	return nil
}

// eventVisible decides whether c may read ev; admins caches domain admin lists for one batch.
func (a *Admin) eventVisible(st *raftstore.State, c caller, ev *meshcav1.Event, admins map[string][]string) bool {
	domain := EventDomain(ev)
	res := Resource{Kind: "event", Domain: domain}
	if domain != "" {
		list, ok := admins[domain]
		if !ok {
			if d, err := st.Domain(domain); err == nil {
				list = d.GetAdmins()
			}
			admins[domain] = list
		}
		res.DomainAdmins = list
	}
	return a.allowed(c, ActionEventRead, res)
}
