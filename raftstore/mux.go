package raftstore

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// mux serves the cluster port: it completes the TLS handshake (which runs the peer check)
// and routes each connection by its negotiated ALPN protocol, ALPNRaft to the Raft stream
// layer and ALPNGRPC to the internal gRPC server.
type mux struct {
	ln               net.Listener
	tlsConfig        *tls.Config
	handshakeTimeout time.Duration
	refused          *prometheus.CounterVec
	logger           *slog.Logger

	raft *chanListener
	grpc *chanListener

	closeOnce sync.Once
	closed    chan struct{}
	// routeMu orders starting a route goroutine against Close's wg.Wait.
	routeMu  sync.RWMutex
	stopping bool
	wg       sync.WaitGroup
}

func newMux(ln net.Listener, cfg *tls.Config, handshakeTimeout time.Duration, refused *prometheus.CounterVec, logger *slog.Logger) *mux {
	m := &mux{
		ln:               ln,
		tlsConfig:        cfg,
		handshakeTimeout: handshakeTimeout,
		refused:          refused,
		logger:           logger,
		closed:           make(chan struct{}),
	}
	m.raft = newChanListener(ln.Addr())
	m.grpc = newChanListener(ln.Addr())
	return m
}

func (m *mux) raftListener() net.Listener { return m.raft }
func (m *mux) grpcListener() net.Listener { return m.grpc }

// Serve accepts connections until Close.
func (m *mux) Serve() {
	var delay time.Duration
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A temporary accept error (too many open files): back off, like net/http.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			m.logger.Warn("cluster port accept", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-m.closed:
				return
			}
			continue
		}
		delay = 0
		m.routeMu.RLock()
		if m.stopping {
			m.routeMu.RUnlock()
			conn.Close()
			return
		}
		m.wg.Add(1)
		m.routeMu.RUnlock()
		go func() {
			defer m.wg.Done()
			m.route(conn)
		}()
	}
}

func (m *mux) route(raw net.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), m.handshakeTimeout)
	defer cancel()
	conn := tls.Server(raw, m.tlsConfig)
	if err := conn.HandshakeContext(ctx); err != nil {
		// The peer check counted and logged its own refusals; count the rest (not TLS,
		// no common version or cipher, timeouts) under one reason.
		var pr *PeerRefusedError
		if !errors.As(err, &pr) {
			m.refused.WithLabelValues(RefusedHandshake).Inc()
			m.logger.Warn("cluster connection refused", "reason", RefusedHandshake, "remote", raw.RemoteAddr().String(), "err", err)
		}
		raw.Close()
		return
	}
	var target *chanListener
	switch proto := conn.ConnectionState().NegotiatedProtocol; proto {
	case ALPNRaft:
		target = m.raft
	case ALPNGRPC:
		target = m.grpc
	default:
		m.refused.WithLabelValues(RefusedNoALPN).Inc()
		m.logger.Warn("cluster connection refused", "reason", RefusedNoALPN, "remote", raw.RemoteAddr().String())
		conn.Close()
		return
	}
	if !target.deliver(conn, m.closed) {
		conn.Close()
	}
}

// Close stops accepting, closes both routed listeners and waits for handshakes in flight.
func (m *mux) Close() error {
	var err error
	m.closeOnce.Do(func() {
		close(m.closed)
		err = m.ln.Close()
		m.raft.Close()
		m.grpc.Close()
		m.routeMu.Lock()
		m.stopping = true
		m.routeMu.Unlock()
	})
	m.wg.Wait()
	return err
}

// chanListener is a net.Listener fed with connections the mux already accepted.
type chanListener struct {
	addr      net.Addr
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// deliver hands conn to Accept; false when the listener or the mux is closed.
func (l *chanListener) deliver(conn net.Conn, muxClosed <-chan struct{}) bool {
	select {
	case l.conns <- conn:
		return true
	case <-l.done:
		return false
	case <-muxClosed:
		return false
	}
}

// Accept returns the next routed connection.
func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops Accept; the mux keeps running for the other protocol.
func (l *chanListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

// Addr returns the cluster port's address.
func (l *chanListener) Addr() net.Addr { return l.addr }
