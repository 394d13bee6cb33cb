package sds

import (
	"context"
	"fmt"
	"sync"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// holdCache is go-control-plane's SnapshotCache (one snapshot per identity, keyed by the
// identity the connection proved, which the handler puts in node.id) with the two rules Envoy
// needs that the SnapshotCache does not have:
//   - a watch is held, not answered, while answerable says no (a secret Envoy asked for is still
//     on its way), and handed to the SnapshotCache the moment a new snapshot makes it answerable;
//   - a NACK does not bring the rejected version back: the watch waits for the next version.
//
// The protocol itself (versions, nonces, returned resources, delta diffs) stays with
// go-control-plane's server and cache.
type holdCache struct {
	inner cache.SnapshotCache

	mu    sync.Mutex
	nodes map[string]*nodeState
}

var _ cache.Cache = (*holdCache)(nil)

type nodeState struct {
	id      spiffeid.ID
	secrets map[string]types.Resource // of the current snapshot; nil before the first
	held    map[*heldWatch]struct{}
	changed chan struct{} // closed on every snapshot change, for Fetch
}

// heldWatch is a watch the SnapshotCache has not seen yet. Exactly one of resp and dresp is set.
type heldWatch struct {
	req   *discovery.DiscoveryRequest
	dreq  *discovery.DeltaDiscoveryRequest
	sub   cache.Subscription
	resp  chan cache.Response
	dresp chan cache.DeltaResponse

	innerCancel func() // set once handed to the SnapshotCache
}

func newHoldCache(inner cache.SnapshotCache) *holdCache {
	return &holdCache{inner: inner, nodes: make(map[string]*nodeState)}
}

func (c *holdCache) nodeLocked(nodeID string) (*nodeState, error) {
	if n, ok := c.nodes[nodeID]; ok {
		return n, nil
	}
	id, err := spiffeid.FromString(nodeID)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "node.id %q: not a SPIFFE ID set by the handler: %v", nodeID, err)
	}
	n := &nodeState{id: id, held: make(map[*heldWatch]struct{}), changed: make(chan struct{})}
	c.nodes[nodeID] = n
	return n, nil
}

func (n *nodeState) answerable(sub cache.Subscription, names []string) bool {
	if n.secrets == nil {
		return false
	}
	if sub != nil && sub.IsWildcard() {
		names = nil
	}
	var returned map[string]string
	if sub != nil {
		returned = sub.ReturnedResources()
	}
	present := func(name string) bool { _, ok := n.secrets[name]; return ok }
	return answerable(n.id, names, present, len(n.secrets) > 0, returned)
}

func subscribedNames(sub cache.Subscription) []string {
	names := make([]string, 0, len(sub.SubscribedResources()))
	for name := range sub.SubscribedResources() {
		names = append(names, name)
	}
	return names
}

// SetSnapshot installs the snapshot of one identity: open watches in the SnapshotCache are
// answered by it, held watches that became answerable are handed to it.
func (c *holdCache) SetSnapshot(ctx context.Context, nodeID string, snap *cache.Snapshot) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.nodeLocked(nodeID)
	if err != nil {
		return err
	}
	n.secrets = snap.GetResources(resource.SecretType)
	if err := c.inner.SetSnapshot(ctx, nodeID, snap); err != nil {
		return fmt.Errorf("snapshot of %q: %w", nodeID, err)
	}
	for w := range n.held {
		if w.req != nil && !n.answerable(w.sub, w.req.GetResourceNames()) {
			continue
		}
		if w.dreq != nil && !n.answerable(w.sub, subscribedNames(w.sub)) {
			continue
		}
		delete(n.held, w)
		if w.req != nil {
			w.innerCancel, err = c.inner.CreateWatch(w.req, w.sub, w.resp)
		} else {
			w.innerCancel, err = c.inner.CreateDeltaWatch(w.dreq, w.sub, w.dresp)
		}
		if err != nil {
			return fmt.Errorf("releasing a held watch of %q: %w", nodeID, err)
		}
	}
	close(n.changed)
	n.changed = make(chan struct{})
	return nil
}

func (c *holdCache) cancelFunc(n *nodeState, w *heldWatch) func() {
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(n.held, w)
		if w.innerCancel != nil {
			w.innerCancel()
		}
	}
}

// CreateWatch implements cache.ConfigWatcher for state-of-the-world streams.
func (c *holdCache) CreateWatch(req *cache.Request, sub cache.Subscription, resp chan cache.Response) (func(), error) {
	if req.GetErrorDetail() != nil {
		req = withLastSentVersion(req, sub)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.nodeLocked(req.GetNode().GetId())
	if err != nil {
		return nil, err
	}
	if n.answerable(sub, req.GetResourceNames()) {
		return c.inner.CreateWatch(req, sub, resp)
	}
	w := &heldWatch{req: req, sub: sub, resp: resp}
	n.held[w] = struct{}{}
	return c.cancelFunc(n, w), nil
}

// withLastSentVersion answers a NACK: the client reports the version it still runs, which the
// SnapshotCache would take as "out of date" and answer with the rejected version again, in a
// loop. Marking the watch as holding the version last sent makes it wait for the next one.
func withLastSentVersion(req *cache.Request, sub cache.Subscription) *cache.Request {
	for _, v := range sub.ReturnedResources() {
		out := proto.Clone(req).(*discovery.DiscoveryRequest)
		out.VersionInfo = v
		return out
	}
	return req
}

// CreateDeltaWatch implements cache.ConfigWatcher for delta streams.
func (c *holdCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, resp chan cache.DeltaResponse) (func(), error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.nodeLocked(req.GetNode().GetId())
	if err != nil {
		return nil, err
	}
	if n.answerable(sub, subscribedNames(sub)) {
		return c.inner.CreateDeltaWatch(req, sub, resp)
	}
	w := &heldWatch{dreq: req, sub: sub, dresp: resp}
	n.held[w] = struct{}{}
	return c.cancelFunc(n, w), nil
}

// Fetch implements cache.ConfigFetcher: it waits, as long as ctx allows, until the names asked
// for can be answered, then answers from the SnapshotCache.
func (c *holdCache) Fetch(ctx context.Context, req *cache.Request) (cache.Response, error) {
	for {
		c.mu.Lock()
		n, err := c.nodeLocked(req.GetNode().GetId())
		if err != nil {
			c.mu.Unlock()
			return nil, err
		}
		ready := n.answerable(nil, req.GetResourceNames())
		changed := n.changed
		c.mu.Unlock()
		if ready {
			resp, err := c.inner.Fetch(ctx, req)
			if err != nil {
				if _, ok := err.(*types.SkipFetchError); ok {
					return nil, status.Errorf(codes.FailedPrecondition, "version_info %q: already the current version", req.GetVersionInfo())
				}
				return nil, status.Errorf(codes.Internal, "fetch: %v", err)
			}
			return resp, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, status.FromContextError(fmt.Errorf("waiting for %v: %w", req.GetResourceNames(), ctx.Err())).Err()
		}
	}
}
