package faulttest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/internal/clustertest"
)

// The load client's shape. Each worker keeps a few instances and registers or refreshes one
// per call, sending each call to the next node in turn; a racer makes two refreshes present
// one certificate at once through two nodes, which the serial rule lets at most one win.
const (
	loadWorkers        = 4
	instancesPerWorker = 4
	// callTimeout bounds one Register or Refresh: a call to a node that cannot commit (cut
	// off, paused) gives up and the next goes to another node.
	callTimeout = 3 * time.Second
	// failurePause paces a worker after a failed call, so a stopped cluster is not hammered.
	failurePause = 100 * time.Millisecond
	// racePause paces the racer, keeping races a small share of the load.
	racePause = 200 * time.Millisecond
	// maxCalls bounds the calls of one test's load client (the whole suite makes about
	// 1,000); a call past it is refused by the client itself, which fails the test.
	maxCalls = 20000
)

// ack is an issuance the client was answered with a certificate for.
type ack struct {
	serial string
	// presented is the serial of the certificate a refresh was authenticated with; empty for
	// a registration.
	presented string
	instance  string
	node      string
	// start is when the call was sent, done when its answer arrived.
	start, done time.Time
}

// ledger is what the load client knows: every acknowledged issuance, and every rule it saw
// broken.
type ledger struct {
	mu          sync.Mutex
	acks        []ack
	byPresented map[string]string // presented serial → the serial acknowledged for it
	violations  []string
	// unanswered counts calls whose outcome the client cannot know (the node was
	// unreachable, gave up, or lost the answer).
	unanswered int
	// revokedAfterLost counts instances revoked because two refreshes in a row went
	// unanswered: the serial rule accepts the previous serial once, so a third attempt with it
	// is refused as a stale serial. That is the rule working, not a lost write.
	revokedAfterLost int
	// races counts the double refreshes the racer made, and raceWins the refreshes of those
	// that were acknowledged.
	races, raceWins int
}

func newLedger() *ledger { return &ledger{byPresented: map[string]string{}} }

// record adds an acknowledged issuance; a second acknowledgement for one presented serial
// breaks the serial rule.
func (l *ledger) record(a ack) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acks = append(l.acks, a)
	if a.presented == "" {
		return
	}
	if prev, ok := l.byPresented[a.presented]; ok {
		l.violations = append(l.violations, fmt.Sprintf("refresh presenting serial %s of %s was acknowledged twice: serials %s and %s (the second through %s)",
			a.presented, a.instance, prev, a.serial, a.node))
		return
	}
	l.byPresented[a.presented] = a.serial
}

func (l *ledger) violate(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.violations = append(l.violations, fmt.Sprintf(format, args...))
}

func (l *ledger) count(f func(*ledger)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(l)
}

// snapshot copies the acknowledgements.
func (l *ledger) snapshot() []ack {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ack(nil), l.acks...)
}

// firstStartedAfter is the earliest answer to a call sent at or after t0.
func (l *ledger) firstStartedAfter(t0 time.Time) (ack, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var best ack
	found := false
	for _, a := range l.acks {
		if !a.start.Before(t0) && (!found || a.done.Before(best.done)) {
			best, found = a, true
		}
	}
	return best, found
}

// answeredAfter counts the acknowledgements that arrived after t.
func (l *ledger) answeredAfter(t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.acks {
		if a.done.After(t) {
			n++
		}
	}
	return n
}

// workload is one instance of the provider's: its names, its current certificate, and the
// key of a refresh whose answer is pending.
type workload struct {
	id    string
	names policy.WorkloadNames
	cert  *tls.Certificate
	// serial is cert's serial in the state's notation (lowercase hex).
	serial string
	// next is the key of the refresh in progress: kept across unanswered attempts, so the
	// retry asks for the same key, as the serial rule's one retry with the previous serial
	// requires.
	next crypto.Signer
	// lost counts unanswered refreshes in a row with next.
	lost int
}

// loadClient registers and refreshes instances through the cluster's nodes. Its instances
// and ledger outlive a run, so every scenario adds to what later checks cover.
type loadClient struct {
	c       *cluster
	l       *ledger
	workers [][]*workload
	ids     atomic.Int64
	calls   atomic.Int64
	stopc   chan struct{}
	wg      sync.WaitGroup
}

func newLoadClient(c *cluster) *loadClient {
	return &loadClient{c: c, l: newLedger(), workers: make([][]*workload, loadWorkers)}
}

// start runs the workers and the racer until stop.
func (ld *loadClient) start() {
	ld.stopc = make(chan struct{})
	for w := range loadWorkers {
		ld.wg.Add(1)
		go func() { defer ld.wg.Done(); ld.work(w) }()
	}
	ld.wg.Add(1)
	go func() { defer ld.wg.Done(); ld.race() }()
}

// stop ends the run: each goroutine finishes its call in progress (bounded by callTimeout).
func (ld *loadClient) stop() {
	close(ld.stopc)
	ld.wg.Wait()
}

func (ld *loadClient) stopped() bool {
	select {
	case <-ld.stopc:
		return true
	default:
		return false
	}
}

// pause waits d unless the run stops first.
func (ld *loadClient) pause(d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ld.stopc:
	case <-timer.C:
	}
}

func (ld *loadClient) work(w int) {
	k := w // which node the next call goes to
	next := 0
	for !ld.stopped() {
		n := ld.c.nodes[k%len(ld.c.nodes)]
		k++
		insts := ld.workers[w]
		ok := false
		if len(insts) < instancesPerWorker {
			in := ld.newWorkload()
			if ok = ld.register(n, in); ok {
				ld.workers[w] = append(insts, in)
			}
		} else {
			i := next % len(insts)
			next++
			var keep bool
			ok, keep = ld.refresh(n, insts[i])
			if !keep {
				ld.workers[w] = append(insts[:i:i], insts[i+1:]...)
			}
		}
		if !ok {
			ld.pause(failurePause)
		}
	}
}

// race registers an instance and sends two refreshes presenting its certificate, with
// different keys, through two nodes at once: at most one may be acknowledged. The loser's
// serial is a stale one, so the instance ends revoked.
func (ld *loadClient) race() {
	k := 0
	for !ld.stopped() {
		in := ld.newWorkload()
		if !ld.register(ld.c.nodes[k%len(ld.c.nodes)], in) {
			k++
			ld.pause(failurePause)
			continue
		}
		var wg sync.WaitGroup
		var wins atomic.Int64
		for j := range 2 {
			n := ld.c.nodes[(k+j)%len(ld.c.nodes)]
			key := newKey()
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				defer cancel()
				start := time.Now()
				resp, err := ld.callRefresh(ctx, n, in.cert, in.csr(key))
				if err == nil {
					if _, err := tlsCert(resp, key); err != nil {
						ld.l.violate("race refresh of %s through %s: %v", in.id, n.id, err)
						return
					}
					wins.Add(1)
					ld.l.record(ack{serial: resp.GetSerial(), presented: in.serial, instance: in.id, node: n.id, start: start, done: time.Now()})
				}
			}()
		}
		wg.Wait()
		k++
		ld.l.count(func(l *ledger) { l.races++; l.raceWins += int(wins.Load()) })
		ld.pause(racePause)
	}
}

func (ld *loadClient) newWorkload() *workload {
	id := fmt.Sprintf("fault-%d.load", ld.ids.Add(1))
	names, err := policy.WorkloadRequest{TrustDomain: trustDomain, Domain: domainName, Service: serviceName, ProviderDNSSuffix: providerSuffix, InstanceID: id}.Names()
	if err != nil {
		panic(err) // the names are this file's constants
	}
	return &workload{id: id, names: names}
}

// register asks n for the instance's first certificate with a new key, within callTimeout.
// A refusal is a violation: the provider admits every instance of the load. It reports
// whether the instance has a certificate now.
func (ld *loadClient) register(n *node, in *workload) bool {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return ld.registerCtx(ctx, n, in)
}

// registerCtx is register within ctx.
func (ld *loadClient) registerCtx(ctx context.Context, n *node, in *workload) bool {
	key := newKey()
	start := time.Now()
	resp, err := ld.callRegister(ctx, n, in, key)
	if err != nil {
		ld.failed(n, in, "register", err)
		return false
	}
	cert, err := tlsCert(resp, key)
	if err != nil {
		ld.l.violate("register %s through %s: %v", in.id, n.id, err)
		return false
	}
	in.cert, in.serial, in.next, in.lost = cert, resp.GetSerial(), nil, 0
	ld.l.record(ack{serial: resp.GetSerial(), instance: in.id, node: n.id, start: start, done: time.Now()})
	return true
}

// refresh asks n for the instance's next certificate. It reports whether it was answered,
// and whether the instance is still usable.
func (ld *loadClient) refresh(n *node, in *workload) (ok, keep bool) {
	if in.next == nil {
		in.next, in.lost = newKey(), 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	start := time.Now()
	resp, err := ld.callRefresh(ctx, n, in.cert, in.csr(in.next))
	if err != nil {
		if unanswered(err) {
			in.lost++
			ld.l.count(func(l *ledger) { l.unanswered++ })
			return false, true
		}
		if status.Code(err) == codes.PermissionDenied && in.lost >= 2 {
			ld.l.count(func(l *ledger) { l.revokedAfterLost++ })
			return false, false
		}
		ld.l.violate("refresh of %s presenting %s through %s after %d unanswered attempts: %v", in.id, in.serial, n.id, in.lost, err)
		return false, false
	}
	cert, err := tlsCert(resp, in.next)
	if err != nil {
		ld.l.violate("refresh of %s through %s: %v", in.id, n.id, err)
		return false, false
	}
	presented := in.serial
	in.cert, in.serial, in.next, in.lost = cert, resp.GetSerial(), nil, 0
	ld.l.record(ack{serial: resp.GetSerial(), presented: presented, instance: in.id, node: n.id, start: start, done: time.Now()})
	return true, true
}

// failed files a failed registration: unanswered, or a violation.
func (ld *loadClient) failed(n *node, in *workload, op string, err error) {
	if unanswered(err) {
		ld.l.count(func(l *ledger) { l.unanswered++ })
		return
	}
	ld.l.violate("%s %s through %s: %v", op, in.id, n.id, err)
}

// unanswered reports whether a call's outcome is unknown to the client: the node could not
// be reached or gave up before the command committed, or the answer was lost. The others are
// refusals that name a rule.
func unanswered(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.Unknown:
		return true
	}
	return false
}

func (ld *loadClient) callRegister(ctx context.Context, n *node, in *workload, key crypto.Signer) (*meshcav1.IdentityResponse, error) {
	return ld.call(ctx, n, nil, func(ctx context.Context, c meshcav1.IdentityClient) (*meshcav1.IdentityResponse, error) {
		return c.Register(ctx, &meshcav1.RegisterRequest{
			Provider: providerName, Domain: domainName, Service: serviceName,
			AttestationData: []byte("doc:" + in.id), Csr: in.csr(key),
		})
	})
}

func (ld *loadClient) callRefresh(ctx context.Context, n *node, cert *tls.Certificate, csr []byte) (*meshcav1.IdentityResponse, error) {
	return ld.call(ctx, n, cert, func(ctx context.Context, c meshcav1.IdentityClient) (*meshcav1.IdentityResponse, error) {
		return c.Refresh(ctx, &meshcav1.RefreshRequest{Csr: csr})
	})
}

// call makes one identity call within ctx on a connection of its own, presenting cert when
// it is not nil (a refresh is authenticated with the instance's current certificate).
func (ld *loadClient) call(ctx context.Context, n *node, cert *tls.Certificate, f func(context.Context, meshcav1.IdentityClient) (*meshcav1.IdentityResponse, error)) (*meshcav1.IdentityResponse, error) {
	if ld.calls.Add(1) > maxCalls {
		return nil, status.Errorf(codes.ResourceExhausted, "load client: the cap of %d calls is reached", maxCalls)
	}
	cc, err := grpc.NewClient(n.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(ld.c.ca.TLSConfig(cert))))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	return f(ctx, meshcav1.NewIdentityClient(cc))
}

// csr is a certificate request for the instance's names with key.
func (in *workload) csr(key crypto.Signer) []byte {
	uri, _ := url.Parse(in.names.SPIFFEID.String())
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: in.names.CommonName},
		DNSNames: []string{in.names.ServiceDNS, in.names.InstanceDNS},
		URIs:     []*url.URL{uri},
	}, key)
	if err != nil {
		panic(err) // a fresh P-256 key signs any request
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func newKey() crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// tlsCert pairs an issued certificate with its key, checking that they match and that the
// answer's serial is the leaf's.
func tlsCert(resp *meshcav1.IdentityResponse, key crypto.Signer) (*tls.Certificate, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	c, err := tls.X509KeyPair([]byte(resp.GetCertificate()+resp.GetChain()), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	if got := c.Leaf.SerialNumber.Text(16); got != resp.GetSerial() {
		return nil, fmt.Errorf("serial: the answer says %s, the leaf has %s", resp.GetSerial(), got)
	}
	return &c, nil
}

// waitAnswered waits until n calls were answered after t.
func (ld *loadClient) waitAnswered(tb testing.TB, t time.Time, n int) {
	tb.Helper()
	clustertest.Poll(tb, fmt.Sprintf("%d issuances answered", n), func() error {
		if got := ld.l.answeredAfter(t); got < n {
			return fmt.Errorf("%d answered", got)
		}
		return nil
	})
}

// waitResumed measures how long after t0 issuance resumed. Besides the load's own calls, a
// prober per node registers a new instance through it at once, retrying until one is
// answered: a worker may be held up by a call to a node that cannot answer, a prober is not.
// The earliest answer to a call sent at or after t0 decides. The probers are stopped before
// it returns.
func (ld *loadClient) waitResumed(tb testing.TB, t0 time.Time) (time.Duration, ack) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clustertest.WaitTimeout)
	var wg sync.WaitGroup
	for _, n := range ld.c.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); ld.probe(ctx, n) }()
	}
	defer func() { cancel(); wg.Wait() }()
	var first ack
	clustertest.Poll(tb, "issuance to resume", func() error {
		a, ok := ld.l.firstStartedAfter(t0)
		if !ok {
			return fmt.Errorf("no call sent since the fault was answered")
		}
		first = a
		return nil
	})
	return first.done.Sub(t0), first
}

// probe registers new instances through n until one is answered or ctx ends.
func (ld *loadClient) probe(ctx context.Context, n *node) {
	for ctx.Err() == nil {
		if ld.registerCtx(ctx, n, ld.newWorkload()) {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(failurePause):
		}
	}
}

// verify checks the ledger against every node, with the load stopped: the nodes converge on
// one state hash; every acknowledged serial is in every node's event log (as the issued or
// refreshed certificate); every instance whose last refresh was answered has that serial as
// its current one on every node; and the client saw no rule broken. It returns how many
// acknowledged issuances were missing from some node (they must be none).
func (ld *loadClient) verify(t testing.TB) (lost int) {
	t.Helper()
	c := ld.c
	index, hash := c.converged(t)
	acks := ld.l.snapshot()
	for _, n := range c.nodes {
		have := c.issuedSerials(t, n)
		missing := 0
		for _, a := range acks {
			if !have[a.serial] {
				if missing < 5 {
					t.Errorf("%s: acknowledged serial %s (%s via %s at %s) is not in its state", n.id, a.serial, a.instance, a.node, a.done.Format(time.RFC3339Nano))
				}
				missing++
			}
		}
		lost = max(lost, missing)
	}
	for w := range ld.workers {
		for _, in := range ld.workers[w] {
			if in.cert == nil || in.next != nil {
				continue
			}
			for _, n := range c.nodes {
				ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
				got, err := c.adminClient(n).GetInstance(ctx, &meshcav1.GetInstanceRequest{Provider: providerName, InstanceId: in.id})
				cancel()
				if err != nil {
					t.Errorf("%s: instance %s: %v", n.id, in.id, err)
					continue
				}
				if got.GetCurrentSerial() != in.serial || got.GetRevoked() {
					t.Errorf("%s: instance %s has current serial %s (revoked %v); the client was last answered %s", n.id, in.id, got.GetCurrentSerial(), got.GetRevoked(), in.serial)
				}
			}
		}
	}
	ld.l.mu.Lock()
	violations := append([]string(nil), ld.l.violations...)
	ld.l.mu.Unlock()
	for _, v := range violations {
		t.Error(v)
	}
	t.Logf("every node applied index %d with state hash %x; %d acknowledged issuances, %d missing from some node", index, hash[:8], len(acks), lost)
	return lost
}

// issuedSerials reads a node's whole event log and returns the serials of the issued and
// refreshed certificates it records.
func (c *cluster) issuedSerials(t testing.TB, n *node) map[string]bool {
	t.Helper()
	st, err := c.status(n, false)
	if err != nil {
		t.Fatal(err)
	}
	last := st.GetLastEventIndex()
	out := map[string]bool{}
	if last == 0 {
		return out
	}
	ctx, cancel := context.WithTimeout(context.Background(), clustertest.WaitTimeout)
	defer cancel()
	stream, err := c.adminClient(n).WatchEvents(ctx, &meshcav1.WatchEventsRequest{FromIndex: 1})
	if err != nil {
		t.Fatalf("%s: watch events: %v", n.id, err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("%s: events up to %d: %v", n.id, last, err)
		}
		switch ev.GetKind() {
		case meshcav1.EventKind_EVENT_KIND_ISSUED, meshcav1.EventKind_EVENT_KIND_REFRESHED:
			out[ev.GetSerial()] = true
		}
		if ev.GetIndex() >= last {
			return out
		}
	}
}

// durations formats a list of durations, sorted, in seconds.
func durations(ds []time.Duration) string {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	out := ""
	for i, d := range s {
		if i > 0 {
			out += " "
		}
		out += fmt.Sprintf("%.2fs", d.Seconds())
	}
	return out
}
