package sds

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// WorkloadAPIConfig configures a WorkloadAPI server.
type WorkloadAPIConfig struct {
	// Source is where secrets come from (required).
	Source Source
	// Resolver tells which identity a caller is (required).
	Resolver IdentityResolver
	// Logger receives refused callers; nil means slog.Default().
	Logger *slog.Logger
}

// Validate reports the first field that is missing.
func (c WorkloadAPIConfig) Validate() error {
	if c.Source == nil {
		return fmt.Errorf("workload api config: Source: must be set: %w", ErrConfig)
	}
	if c.Resolver == nil {
		return fmt.Errorf("workload api config: Resolver: must be set: %w", ErrConfig)
	}
	return nil
}

// WorkloadAPI serves the X.509 part of the SPIFFE Workload API (FetchX509SVID and
// FetchX509Bundles, both streaming every change), so go-spiffe clients such as
// workloadapi.X509Source work unchanged. meshca issues no JWT-SVIDs: the JWT methods answer
// Unimplemented. Every call must carry the "workload.spiffe.io: true" metadata (InvalidArgument
// otherwise, as the SPIFFE Workload Endpoint specification says), and a caller that maps to no
// identity gets PermissionDenied.
type WorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	src      Source
	resolver IdentityResolver
	log      *slog.Logger
}

// NewWorkloadAPI validates cfg and builds the server.
func NewWorkloadAPI(cfg WorkloadAPIConfig) (*WorkloadAPI, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	return &WorkloadAPI{src: cfg.Source, resolver: cfg.Resolver, log: logger}, nil
}

// Register adds the SpiffeWorkloadAPI service to g.
func (w *WorkloadAPI) Register(g grpc.ServiceRegistrar) {
	workload.RegisterSpiffeWorkloadAPIServer(g, w)
}

const securityHeader = "workload.spiffe.io"

func checkSecurityHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(securityHeader)
	if len(v) != 1 || v[0] != "true" {
		return status.Errorf(codes.InvalidArgument, "security header missing from request: metadata %q must be \"true\"", securityHeader)
	}
	return nil
}

// FetchX509SVID streams the caller's X.509-SVID with its own bundle and the federated bundles:
// once it and the own bundle exist, and again on every change.
func (w *WorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, st grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := st.Context()
	if err := checkSecurityHeader(ctx); err != nil {
		return err
	}
	id, err := w.resolver.Resolve(ctx)
	if err != nil {
		w.log.Warn("workload api: caller refused", "error", err)
		return status.Errorf(codes.PermissionDenied, "workload api: %v", err)
	}
	sent := ""
	for {
		changed := w.src.Changed()
		v := w.src.View(id)
		own, hasOwn := v.OwnBundle()
		if v.SVID != nil && hasOwn && v.Version != sent {
			resp, err := x509SVIDResponse(v, own.X509Authorities())
			if err != nil {
				return status.Errorf(codes.Internal, "workload api: %v", err)
			}
			if err := st.Send(resp); err != nil {
				return err
			}
			sent = v.Version
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

func x509SVIDResponse(v View, ownRoots []*x509.Certificate) (*workload.X509SVIDResponse, error) {
	key, err := x509.MarshalPKCS8PrivateKey(v.SVID.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("svid %q: private key: PKCS#8: %w", v.ID, err)
	}
	resp := &workload.X509SVIDResponse{
		Svids: []*workload.X509SVID{{
			SpiffeId:    v.ID.String(),
			X509Svid:    derCerts(v.SVID.Certificates),
			X509SvidKey: key,
			Bundle:      derCerts(ownRoots),
			Hint:        v.SVID.Hint,
		}},
	}
	for _, b := range v.AllBundles() {
		if b.TrustDomain() == v.ID.TrustDomain() {
			continue
		}
		if resp.FederatedBundles == nil {
			resp.FederatedBundles = make(map[string][]byte)
		}
		resp.FederatedBundles[b.TrustDomain().IDString()] = derCerts(b.X509Authorities())
	}
	return resp, nil
}

// FetchX509Bundles streams every trust bundle (own and federated) the caller trusts: once any
// exists, and again on every change.
func (w *WorkloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, st grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	ctx := st.Context()
	if err := checkSecurityHeader(ctx); err != nil {
		return err
	}
	id, err := w.resolver.Resolve(ctx)
	if err != nil {
		w.log.Warn("workload api: caller refused", "error", err)
		return status.Errorf(codes.PermissionDenied, "workload api: %v", err)
	}
	sent := ""
	for {
		changed := w.src.Changed()
		v := w.src.View(id)
		bundles := v.AllBundles()
		if len(bundles) > 0 && v.Version != sent {
			resp := &workload.X509BundlesResponse{Bundles: make(map[string][]byte, len(bundles))}
			for _, b := range bundles {
				resp.Bundles[b.TrustDomain().IDString()] = derCerts(b.X509Authorities())
			}
			if err := st.Send(resp); err != nil {
				return err
			}
			sent = v.Version
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

var errNoJWT = status.Error(codes.Unimplemented, "workload api: JWT-SVIDs are not issued by meshca; only X.509-SVIDs and bundles are served")

// FetchJWTSVID answers Unimplemented: meshca issues X.509-SVIDs only.
func (w *WorkloadAPI) FetchJWTSVID(context.Context, *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	return nil, errNoJWT
}

// FetchJWTBundles answers Unimplemented: meshca issues X.509-SVIDs only.
func (w *WorkloadAPI) FetchJWTBundles(*workload.JWTBundlesRequest, grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return errNoJWT
}

// ValidateJWTSVID answers Unimplemented: meshca issues X.509-SVIDs only.
func (w *WorkloadAPI) ValidateJWTSVID(context.Context, *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	return nil, errNoJWT
}
