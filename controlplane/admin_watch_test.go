package controlplane

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/raftstore"
)

// watch opens a WatchEvents stream and returns it with its cancel function.
func (e *adminEnv) watch(c meshcav1.AdminClient, req *meshcav1.WatchEventsRequest) (grpc.ServerStreamingClient[meshcav1.Event], context.CancelFunc) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	e.t.Cleanup(cancel)
	stream, err := c.WatchEvents(ctx, req)
	ok(e.t, err)
	return stream, cancel
}

// recvUntil receives events until stop accepts one, and returns them all.
func recvUntil(t testing.TB, stream grpc.ServerStreamingClient[meshcav1.Event], stop func(*meshcav1.Event) bool) []*meshcav1.Event {
	t.Helper()
	var got []*meshcav1.Event
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		got = append(got, ev)
		if stop(ev) {
			return got
		}
	}
}

func indexes(evs []*meshcav1.Event) []uint64 {
	var out []uint64
	for _, ev := range evs {
		out = append(out, ev.GetIndex())
	}
	return out
}

// WatchEvents replays the retained events from an index, then streams new ones as they are
// applied: a compromise detected by a refresh with an old serial arrives on the open stream,
// and a stream resumed after the last index received continues without a gap or a repeat.
func TestAdminWatchEventsResumesFromAnIndexAndSeesACompromise(t *testing.T) {
	e := newAdminEnv(t)
	e.seed()
	first := e.register("sports", "api", "pod-1")
	ok(t, e.refresh("sports", "api", "pod-1", first)) // first is now the previous serial
	e.register("news", "web", "pod-9")

	st := e.s.Store().State()
	all := st.Events(1, 0)
	// Start in the middle: at the refresh of pod-1.
	at := slices.IndexFunc(all, func(ev *meshcav1.Event) bool { return ev.GetKind() == meshcav1.EventKind_EVENT_KIND_REFRESHED })
	if at < 1 {
		t.Fatalf("no refresh event after the first event: %v", all)
	}
	from := all[at].GetIndex()
	last := st.LastEventIndex()

	root := e.as(rootAdmin)
	stream, cancel := e.watch(root, &meshcav1.WatchEventsRequest{FromIndex: from})
	replayed := recvUntil(t, stream, func(ev *meshcav1.Event) bool { return ev.GetIndex() >= last })
	if want := indexes(all[at:]); !slices.Equal(indexes(replayed), want) {
		t.Fatalf("replayed %v, want %v", indexes(replayed), want)
	}

	// The instance presents a serial that is neither current nor previous-once: compromise.
	err := e.refresh("sports", "api", "pod-1", "abcdef")
	if !errors.Is(err, raftstore.ErrSerialMismatch) {
		t.Fatalf("refresh with a stale serial: %v, want a serial mismatch", err)
	}
	live := recvUntil(t, stream, func(ev *meshcav1.Event) bool {
		return ev.GetKind() == meshcav1.EventKind_EVENT_KIND_COMPROMISE_DETECTED
	})
	compromise := live[len(live)-1]
	if compromise.GetSubject() != "sys.auth.k8s/sports.api/pod-1" || compromise.GetSerial() != "abcdef" {
		t.Fatalf("compromise event %v", compromise)
	}
	if live[0].GetIndex() != last+1 {
		t.Fatalf("the first live event is %d, want %d (no gap after the replay)", live[0].GetIndex(), last+1)
	}
	cancel()

	// Resume after the last index received; the next event is the next index, not a repeat.
	resumeFrom := compromise.GetIndex() + 1
	for _, ev := range e.s.Store().State().Events(resumeFrom, 0) {
		resumeFrom = ev.GetIndex() + 1 // events the compromise's command also recorded
	}
	stream, cancel = e.watch(root, &meshcav1.WatchEventsRequest{FromIndex: resumeFrom})
	defer cancel()
	if _, err := e.as(rootAdmin).PutDomain(e.ctx(), &meshcav1.PutDomainRequest{Domain: &meshcav1.Domain{Name: "weather"}}); err != nil {
		t.Fatal(err)
	}
	next := recvUntil(t, stream, func(*meshcav1.Event) bool { return true })[0]
	if next.GetIndex() != resumeFrom || next.GetSubject() != "domain/weather" {
		t.Fatalf("resumed stream sent %v, want index %d about domain/weather", next, resumeFrom)
	}
}

// A domain admin's stream carries only the events about its own domain; a kind filter
// narrows any stream; a caller that administers nothing gets no stream.
func TestAdminWatchEventsShowsEachCallerItsOwnEvents(t *testing.T) {
	e := newAdminEnv(t)
	e.seed()
	e.register("sports", "api", "pod-1")
	e.register("news", "web", "pod-9")
	if err := e.refresh("news", "web", "pod-9", "abcdef"); !errors.Is(err, raftstore.ErrSerialMismatch) {
		t.Fatalf("a news compromise: %v", err)
	}

	sports := e.as(sportsAdmin)
	stream, cancel := e.watch(sports, &meshcav1.WatchEventsRequest{FromIndex: 1})
	defer cancel()
	// A marker event the sports admin may see ends the read.
	if _, err := sports.PutService(e.ctx(), &meshcav1.PutServiceRequest{Service: &meshcav1.Service{Domain: "sports", Name: "marker"}}); err != nil {
		t.Fatal(err)
	}
	got := recvUntil(t, stream, func(ev *meshcav1.Event) bool { return ev.GetSubject() == "service/sports.marker" })
	var want []uint64
	for _, ev := range e.s.Store().State().Events(1, 0) {
		if EventDomain(ev) == "sports" && ev.GetIndex() <= got[len(got)-1].GetIndex() {
			want = append(want, ev.GetIndex())
		}
	}
	if !slices.Equal(indexes(got), want) {
		t.Fatalf("the sports admin saw events %v, want exactly the sports events %v", indexes(got), want)
	}
	if !slices.ContainsFunc(got, func(ev *meshcav1.Event) bool {
		return ev.GetKind() == meshcav1.EventKind_EVENT_KIND_ISSUED && ev.GetSubject() == "sys.auth.k8s/sports.api/pod-1"
	}) {
		t.Fatalf("the sports admin did not see its instance's issuance: %v", got)
	}

	// The kind filter: root asks for compromises only, from the start.
	stream, cancel2 := e.watch(e.as(rootAdmin), &meshcav1.WatchEventsRequest{FromIndex: 1, Kinds: []meshcav1.EventKind{meshcav1.EventKind_EVENT_KIND_COMPROMISE_DETECTED}})
	defer cancel2()
	ev := recvUntil(t, stream, func(*meshcav1.Event) bool { return true })[0]
	if ev.GetKind() != meshcav1.EventKind_EVENT_KIND_COMPROMISE_DETECTED || ev.GetSubject() != "sys.auth.k8s/news.web/pod-9" {
		t.Fatalf("filtered stream sent %v", ev)
	}

	stream, cancel3 := e.watch(e.as(plainCaller), &meshcav1.WatchEventsRequest{FromIndex: 1})
	defer cancel3()
	_, err := stream.Recv()
	wantStatus(t, err, codes.PermissionDenied, "caller "+plainCaller+" is neither a system admin nor an admin of any domain")
}

// A watch from an index whose events were pruned is refused, naming the oldest index it can
// resume from; Close ends open streams so a stopping server is not held up.
func TestAdminWatchEventsRefusesAPrunedIndexAndEndsOnClose(t *testing.T) {
	e := newAdminEnv(t)
	e.seed()
	before := e.s.Store().State().LastEventIndex()
	// A prune proposed two hours from now drops every event older than an hour from now.
	later := time.Now().Add(2 * time.Hour)
	e.apply(&meshcav1.Command{Time: later.UnixNano(), Command: &meshcav1.Command_Prune{Prune: &meshcav1.PruneCommand{Cutoff: later.Add(-time.Hour).UnixNano()}}})
	if n := len(e.s.Store().State().Events(1, 0)); n != 0 {
		t.Fatalf("%d events left after the prune", n)
	}
	root := e.as(rootAdmin)
	stream, cancel := e.watch(root, &meshcav1.WatchEventsRequest{FromIndex: 1})
	defer cancel()
	_, err := stream.Recv()
	wantStatus(t, err, codes.OutOfRange, "from_index: events 1 to", "were pruned")

	// From the next index: nothing to replay, the stream waits; new events flow.
	stream, cancel = e.watch(root, &meshcav1.WatchEventsRequest{FromIndex: before + 1})
	defer cancel()
	if _, err := root.PutDomain(e.ctx(), &meshcav1.PutDomainRequest{Domain: &meshcav1.Domain{Name: "weather"}}); err != nil {
		t.Fatal(err)
	}
	if ev := recvUntil(t, stream, func(*meshcav1.Event) bool { return true })[0]; ev.GetIndex() <= before {
		t.Fatalf("after the prune the stream sent %v", ev)
	}
	e.admin.Close()
	for {
		if _, err = stream.Recv(); err != nil {
			break
		}
	}
	wantStatus(t, err, codes.Unavailable, "stopping")
}
