package confirm

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Errors of a confirm call, besides the ErrMalformed of a bad answer.
var (
	// ErrUnreachable means the endpoint could not be reached or did not answer 200 in time.
	ErrUnreachable = errors.New("confirm endpoint unreachable")
	// ErrUntrusted means the endpoint's server certificate is not one the CA issued to the
	// provider's own identity.
	ErrUntrusted = errors.New("confirm endpoint not trusted")
)

// Client calls providers' confirm endpoints over mutual TLS. It keeps one connection pool per
// provider identity. It is safe for concurrent use.
type Client struct {
	svid    x509svid.Source
	bundle  x509bundle.Source
	timeout time.Duration

	mu         sync.Mutex
	transports map[spiffeid.ID]*http.Transport
}

// NewClient returns a client that presents svid as its client certificate, trusts provider
// servers whose certificates chain to bundle, and bounds each call by timeout.
func NewClient(svid x509svid.Source, bundle x509bundle.Source, timeout time.Duration) *Client {
	return &Client{svid: svid, bundle: bundle, timeout: timeout, transports: map[spiffeid.ID]*http.Transport{}}
}

// Confirm posts req to endpoint, requiring the server to prove it is provider (its certificate
// chains to the bundle and names provider as its SPIFFE ID), and returns the strictly decoded
// answer. Failures wrap ErrUnreachable, ErrUntrusted or ErrMalformed.
func (c *Client) Confirm(ctx context.Context, endpoint string, provider spiffeid.ID, req *Request) (*Response, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("%w: endpoint %q is not an https:// URL", ErrUnreachable, endpoint)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("confirm: encoding the request: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := c.transport(provider).RoundTrip(hreq)
	if err != nil {
		if errors.Is(err, ErrUntrusted) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading the answer: %w", ErrUnreachable, err)
	}
	if resp.StatusCode != http.StatusOK {
		snippet := data
		if len(snippet) > 200 {
			snippet = snippet[:200]
		}
		return nil, fmt.Errorf("%w: HTTP %d: %q", ErrUnreachable, resp.StatusCode, snippet)
	}
	return DecodeResponse(data)
}

// CloseIdleConnections closes the pooled connections.
func (c *Client) CloseIdleConnections() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.transports {
		t.CloseIdleConnections()
	}
}

func (c *Client) transport(provider spiffeid.ID) *http.Transport {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.transports[provider]; ok {
		return t
	}
	verify := tlsconfig.VerifyPeerCertificate(c.bundle, tlsconfig.AuthorizeID(provider))
	t := &http.Transport{
		TLSClientConfig: &tls.Config{
			MinVersion:           tls.VersionTLS12,
			GetClientCertificate: tlsconfig.GetClientCertificate(c.svid),
			// The chain and the SPIFFE ID are checked below, as go-spiffe's tlsconfig does:
			// providers are named by SPIFFE ID, not by DNS.
			InsecureSkipVerify: true,
			VerifyPeerCertificate: func(raw [][]byte, chains [][]*x509.Certificate) error {
				if err := verify(raw, chains); err != nil {
					return fmt.Errorf("%w: server certificate is not one this CA issued to %s: %w", ErrUntrusted, provider, err)
				}
				return nil
			},
		},
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   c.timeout,
		ResponseHeaderTimeout: c.timeout,
	}
	c.transports[provider] = t
	return t
}
