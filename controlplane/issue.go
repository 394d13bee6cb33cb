package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/policy"
	"github.com/meshca/meshca/controlplane/confirm"
	"github.com/meshca/meshca/raftstore"
)

// applyTimeout bounds how long an issuance waits for its record to commit.
const applyTimeout = 15 * time.Second

// maxHostnameLen bounds the hostname an instance reports.
const maxHostnameLen = 253

// instanceMarker is the label that separates an instance id from its provider's DNS suffix in
// the instance's DNS SAN: <instance-id>.instanceid.athenz.<provider-dns-suffix>.
const instanceMarker = ".instanceid.athenz."

// Issued is a certificate whose record is committed to the replicated state.
type Issued struct {
	// Chain is the leaf's DER followed by the intermediates' (no root).
	Chain [][]byte
	// NotAfter is the end of the leaf's validity period.
	NotAfter time.Time
	// BundlePEM is the trust bundle to verify it with, as PEM (encoded once per Authority).
	BundlePEM string
	// Serial is the leaf's serial as the replicated state writes it (lowercase hex).
	Serial string
	// SPIFFEID is the leaf's URI SAN.
	SPIFFEID spiffeid.ID
	// InstanceID is the instance's id in its provider's namespace.
	InstanceID string
	// Instance is the instance record after the commit.
	Instance *meshcav1.Instance
}

// registerInput is a Register request with what the transport knows of its caller.
type registerInput struct {
	Provider, Domain, Service string
	// AttestationData is passed to the provider's confirmer.
	AttestationData []byte
	// CSR is PEM or DER.
	CSR        []byte
	TTL        time.Duration
	ServerAuth bool
	Hostname   string
	ClientAddr string
	// Flow is the metrics label; FlowRegister when empty.
	Flow string
	// Confirmed, when set, is the confirmation the calling flow already obtained (it verified
	// a service key token itself): the provider's confirmer is not asked.
	Confirmed *Confirmation
}

// RefreshOptions are the parts of a refresh besides the authenticated client certificate and
// the CSR.
type RefreshOptions struct {
	// TTL asks for a lifetime; zero means the default.
	TTL time.Duration
	// ServerAuth asks for the serverAuth purpose.
	ServerAuth bool
	// AttestationData is passed to providers that confirm refreshes.
	AttestationData []byte
	// Hostname, when set, replaces the one recorded with the instance.
	Hostname string
	// ClientAddr is the client's IP address.
	ClientAddr string
	// Extend marks an OpenZiti-style extend: the old serial stays acceptable once, until the
	// client confirms the new certificate with a VerifyExtend command.
	Extend bool
	// Flow is the metrics label; FlowRefresh when empty.
	Flow string
}

// observe records the outcome of an issuance in the metrics.
func (s *Server) observe(flow string, start time.Time, err error) {
	if err != nil {
		_, reason := classify(err)
		s.metrics.refused.WithLabelValues(reason).Inc()
		return
	}
	m := s.metrics.flow(flow)
	m.issued.Inc()
	m.issuance.Observe(time.Since(start).Seconds())
}

// limitSource takes an issuance token of the client address.
func (s *Server) limitSource(addr string) error {
	if ok, wait := s.perSource.allow(addr, s.now()); !ok {
		return refuse(ErrRateLimited, "client address", "%s asked for more than limits.issue_per_source_per_minute (%d) certificates; retry in %s",
			addr, s.cfg.Limits.IssuePerSourcePerMinute, wait.Round(time.Second))
	}
	return nil
}

// limitIdentity takes an issuance token of an instance.
func (s *Server) limitIdentity(instance string) error {
	if ok, wait := s.perIdentity.allow(instance, s.now()); !ok {
		return refuse(ErrRateLimited, "instance", "%s asked for more than limits.issue_per_identity_per_minute (%d) certificates; retry in %s",
			instance, s.cfg.Limits.IssuePerIdentityPerMinute, wait.Round(time.Second))
	}
	return nil
}

// parseCSR reads a PEM or DER CSR (without verifying it: the policy does).
func parseCSR(data []byte) ([]byte, *x509.CertificateRequest, error) {
	if len(data) == 0 {
		return nil, nil, refuse(policy.ErrInvalidRequest, "csr", "required")
	}
	der, err := ca.DecodeCSR(data)
	if err != nil {
		return nil, nil, refuse(policy.ErrInvalidRequest, "csr", "not a PEM or DER certificate request: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, nil, refuse(policy.ErrInvalidRequest, "csr", "does not parse: %v", err)
	}
	return der, csr, nil
}

// instanceIDOf reads the instance id from the DNS SAN <id>.instanceid.athenz.<suffix>.
func instanceIDOf(field string, dnsNames []string, suffix string) (string, error) {
	marker := instanceMarker + suffix
	var ids []string
	for _, d := range dnsNames {
		if id, ok := strings.CutSuffix(d, marker); ok && id != "" {
			ids = append(ids, id)
		}
	}
	switch len(ids) {
	case 0:
		return "", refuse(policy.ErrSANNotAllowed, field, "no DNS SAN <instance-id>%s names the instance", marker)
	case 1:
		return ids[0], nil
	}
	return "", refuse(policy.ErrSANNotAllowed, field, "%d DNS SANs name an instance (%s); want one", len(ids), strings.Join(ids, ", "))
}

// purposes are the purposes asked for.
func purposes(serverAuth bool) []policy.Purpose {
	if serverAuth {
		return []policy.Purpose{policy.ClientAuth, policy.ServerAuth}
	}
	return []policy.Purpose{policy.ClientAuth}
}

// certRecord is the Cert record of an issued certificate.
func certRecord(iss *ca.Issued, issuerID string) *meshcav1.Cert {
	t := iss.Template
	rec := &meshcav1.Cert{
		Serial:     t.SerialNumber.Text(16),
		NotBefore:  t.NotBefore.UnixNano(),
		NotAfter:   t.NotAfter.UnixNano(),
		SpkiSha256: slices.Clone(iss.Fingerprint[:]),
		IssuerId:   issuerID,
	}
	for _, u := range t.ExtKeyUsage {
		switch u {
		case x509.ExtKeyUsageClientAuth:
			rec.Purposes = append(rec.Purposes, meshcav1.Purpose_PURPOSE_CLIENT_AUTH)
		case x509.ExtKeyUsageServerAuth:
			rec.Purposes = append(rec.Purposes, meshcav1.Purpose_PURPOSE_SERVER_AUTH)
		}
	}
	return rec
}

// checkLaunch is the local, early form of the check the state machine repeats at commit: the
// provider is registered and enabled and the service grants it launch.
func checkLaunch(st *raftstore.State, providerName, domain, service string) (*meshcav1.Provider, error) {
	p, err := st.Provider(providerName)
	if err != nil {
		return nil, refuseAs("provider_unknown", raftstore.ErrNotFound, "provider", "%q is not a registered provider", providerName)
	}
	if err := checkLaunchBy(st, p, domain, service); err != nil {
		return nil, err
	}
	return p, nil
}

// checkLaunchBy is checkLaunch for a provider record already read from st.
func checkLaunchBy(st *raftstore.State, p *meshcav1.Provider, domain, service string) error {
	if !p.GetEnabled() {
		return refuse(raftstore.ErrProviderDisabled, "provider", "%q is disabled", p.GetName())
	}
	identity := raftstore.Identity(domain, service)
	svc, err := st.Service(identity)
	if err != nil {
		return refuseAs("service_unknown", raftstore.ErrNotFound, "service", "%q is not a registered service", identity)
	}
	if !raftstore.AnyGrantMatches(svc.GetLaunchGrants(), p.GetName()) {
		return refuse(raftstore.ErrLaunchNotAuthorized, "provider", "service %q grants launch to no pattern matching %q (grants: %s)",
			identity, p.GetName(), strings.Join(svc.GetLaunchGrants(), ", "))
	}
	return nil
}

// register is flow 1 (provider-launched): every check of DESIGN.md §4 in order, then the
// provider's confirmation, then sign and commit. The certificate is returned only once its
// record is committed; if the commit fails it is discarded.
func (s *Server) register(ctx context.Context, in registerInput) (_ *Issued, err error) {
	start := time.Now()
	flow := orDefault(in.Flow, FlowRegister)
	defer func() { s.observe(flow, start, err) }()

	if err := s.limitSource(in.ClientAddr); err != nil {
		return nil, err
	}
	switch {
	case in.Provider == "":
		return nil, refuse(policy.ErrInvalidRequest, "provider", "required")
	case in.Domain == "":
		return nil, refuse(policy.ErrInvalidRequest, "domain", "required")
	case in.Service == "":
		return nil, refuse(policy.ErrInvalidRequest, "service", "required")
	case len(in.Hostname) > maxHostnameLen:
		return nil, refuse(policy.ErrInvalidRequest, "hostname", "longer than %d characters", maxHostnameLen)
	case in.TTL < 0:
		return nil, refuse(policy.ErrLifetime, "ttl_seconds", "%s is negative", in.TTL)
	}
	auth, issuer, err := s.Authority()
	if err != nil {
		return nil, err
	}
	st := s.fsm.State()
	p, err := checkLaunch(st, in.Provider, in.Domain, in.Service)
	if err != nil {
		return nil, err
	}
	_, csr, err := parseCSR(in.CSR)
	if err != nil {
		return nil, err
	}
	instanceID, err := instanceIDOf("csr", csr.DNSNames, p.GetDnsSuffix())
	if err != nil {
		return nil, err
	}
	if err := s.limitIdentity(raftstore.InstanceKey(p.GetName(), in.Domain, in.Service, instanceID)); err != nil {
		return nil, err
	}
	now := s.now()
	serial, err := ca.NewSerial(nil)
	if err != nil {
		return nil, err
	}
	ttl := in.TTL
	if ttl == 0 {
		ttl = s.policy.DefaultTTL
	}
	req := policy.WorkloadRequest{
		TrustDomain: s.td.Name(), Domain: in.Domain, Service: in.Service,
		ProviderDNSSuffix: p.GetDnsSuffix(), InstanceID: instanceID,
		Purposes: purposes(in.ServerAuth), ServerAuthAllowed: !s.cfg.CA.DenyServerAuth,
		TTL: ttl, Now: now, Serial: serial,
	}
	decision, err := auth.DecideWorkload(csr, req)
	if err != nil {
		return nil, err
	}
	fp := policy.FingerprintSPKI(csr.RawSubjectPublicKeyInfo)
	if ku, err := st.KeyUse(fp[:]); err == nil {
		return nil, refuse(policy.ErrKeyReused, "csr", "public key %s was first used by serial %s; every certificate needs a new key", fp, ku.GetSerial())
	}
	conf := in.Confirmed
	if conf == nil {
		conf, err = s.confirmWith(ctx, p, &confirm.Request{
			Operation: confirm.OperationRegister, Provider: p.GetName(), Domain: in.Domain, Service: in.Service,
			InstanceID: instanceID, AttestationData: in.AttestationData, SANs: sansOf(csr),
			ClientAddr: in.ClientAddr, Hostname: in.Hostname, TTLSeconds: int64(ttl / time.Second),
		})
		if err != nil {
			return nil, err
		}
	}
	if conf.TTL > 0 && conf.TTL < req.TTL {
		// The provider shortened the lifetime: decide again with it.
		req.TTL = conf.TTL
		if decision, err = auth.DecideWorkload(csr, req); err != nil {
			return nil, err
		}
	}
	issued, err := auth.SignWorkload(decision)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, applyTimeout)
	defer cancel()
	res, err := s.Apply(ctx, &meshcav1.Command{Version: raftstore.CommandVersion, Time: now.UnixNano(), Command: &meshcav1.Command_RecordRegister{RecordRegister: &meshcav1.RecordRegisterCommand{
		Provider: p.GetName(), Domain: in.Domain, Service: in.Service, InstanceId: instanceID,
		Cert: certRecord(issued, issuer.GetId()), ClientAddr: in.ClientAddr, Hostname: in.Hostname,
		TokenJti: conf.TokenJTI,
	}}})
	if err != nil {
		return nil, err
	}
	return issuedOf(issued, auth, instanceID, res.GetInstance())
}

// refresh is flow 2: a new certificate for the instance the client certificate names, which
// the caller has authenticated (Authenticate, AuthenticateTLS). The CSR must name the same
// identity and instance; the provider must still be enabled and granted launch; then the
// state machine decides the serial rule: the presented serial must be the instance's current
// one, or its previous one once; any other serial revokes the instance. The extend API calls
// it with opts.Extend.
func (s *Server) refresh(ctx context.Context, clientCert *x509.Certificate, csrPEM []byte, opts RefreshOptions) (_ *Issued, err error) {
	start := time.Now()
	flow := orDefault(opts.Flow, FlowRefresh)
	defer func() { s.observe(flow, start, err) }()

	if err := s.limitSource(opts.ClientAddr); err != nil {
		return nil, err
	}
	switch {
	case len(opts.Hostname) > maxHostnameLen:
		return nil, refuse(policy.ErrInvalidRequest, "hostname", "longer than %d characters", maxHostnameLen)
	case opts.TTL < 0:
		return nil, refuse(policy.ErrLifetime, "ttl_seconds", "%s is negative", opts.TTL)
	}
	auth, issuer, err := s.Authority()
	if err != nil {
		return nil, err
	}
	st := s.fsm.State()
	domain, service, err := workloadOf(s.td, clientCert)
	if err != nil {
		return nil, err
	}
	p, instanceID, err := providerOf(st, clientCert)
	if err != nil {
		return nil, err
	}
	if err := s.limitIdentity(raftstore.InstanceKey(p.GetName(), domain, service, instanceID)); err != nil {
		return nil, err
	}
	_, csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	if err := sameInstance(csr, clientCert, p.GetDnsSuffix(), instanceID); err != nil {
		return nil, err
	}
	if err := checkLaunchBy(st, p, domain, service); err != nil {
		return nil, err
	}
	now := s.now()
	serial, err := ca.NewSerial(nil)
	if err != nil {
		return nil, err
	}
	ttl := opts.TTL
	if ttl == 0 {
		ttl = s.policy.DefaultTTL
	}
	req := policy.WorkloadRequest{
		TrustDomain: s.td.Name(), Domain: domain, Service: service,
		ProviderDNSSuffix: p.GetDnsSuffix(), InstanceID: instanceID,
		Purposes: purposes(opts.ServerAuth), ServerAuthAllowed: !s.cfg.CA.DenyServerAuth,
		TTL: ttl, Now: now, Serial: serial,
	}
	decision, err := auth.DecideWorkload(csr, req)
	if err != nil {
		return nil, err
	}
	if p.GetRefreshNeedsConfirmation() {
		conf, err := s.confirmWith(ctx, p, &confirm.Request{
			Operation: confirm.OperationRefresh, Provider: p.GetName(), Domain: domain, Service: service,
			InstanceID: instanceID, AttestationData: opts.AttestationData, SANs: sansOf(csr),
			ClientAddr: opts.ClientAddr, Hostname: opts.Hostname, TTLSeconds: int64(ttl / time.Second),
		})
		if err != nil {
			return nil, err
		}
		if conf.TTL > 0 && conf.TTL < req.TTL {
			req.TTL = conf.TTL
			if decision, err = auth.DecideWorkload(csr, req); err != nil {
				return nil, err
			}
		}
	}
	issued, err := auth.SignWorkload(decision)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, applyTimeout)
	defer cancel()
	res, err := s.Apply(ctx, &meshcav1.Command{Version: raftstore.CommandVersion, Time: now.UnixNano(), Command: &meshcav1.Command_RecordRefresh{RecordRefresh: &meshcav1.RecordRefreshCommand{
		Provider: p.GetName(), Domain: domain, Service: service, InstanceId: instanceID,
		PresentedSerial: clientCert.SerialNumber.Text(16),
		Cert:            certRecord(issued, issuer.GetId()), ClientAddr: opts.ClientAddr, Hostname: opts.Hostname,
		Extend: opts.Extend,
	}}})
	if err != nil {
		if errors.Is(err, raftstore.ErrSerialMismatch) {
			s.log.Warn("refresh presented a stale serial: instance revoked (compromise detected)",
				"instance", raftstore.InstanceKey(p.GetName(), domain, service, instanceID),
				"presented_serial", clientCert.SerialNumber.Text(16), "client_addr", opts.ClientAddr)
		}
		return nil, err
	}
	return issuedOf(issued, auth, instanceID, res.GetInstance())
}

// workloadOf reads <domain> and <service> from a workload certificate's SPIFFE ID
// spiffe://<td>/ns/<domain>/sa/<service>.
func workloadOf(td spiffeid.TrustDomain, cert *x509.Certificate) (string, string, error) {
	id, err := x509svid.IDFromCert(cert)
	if err != nil {
		return "", "", refuse(ErrIdentityMismatch, "client certificate", "has no SPIFFE ID: %v", err)
	}
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if id.TrustDomain() != td || len(segs) != 4 || segs[0] != "ns" || segs[2] != "sa" {
		return "", "", refuse(ErrIdentityMismatch, "client certificate", "SPIFFE ID %s is not a workload identity spiffe://%s/ns/<domain>/sa/<service>", id, td.Name())
	}
	return segs[1], segs[3], nil
}

// providerOf finds the provider that launched the instance a client certificate names: the
// one whose DNS suffix its instance SAN ends with (suffixes never nest), and the instance id.
func providerOf(st *raftstore.State, cert *x509.Certificate) (*meshcav1.Provider, string, error) {
	for _, p := range st.Providers() {
		for _, d := range cert.DNSNames {
			if strings.HasSuffix(d, instanceMarker+p.GetDnsSuffix()) {
				id, err := instanceIDOf("client certificate", cert.DNSNames, p.GetDnsSuffix())
				return p, id, err
			}
		}
	}
	return nil, "", refuseAs("provider_unknown", raftstore.ErrNotFound, "provider",
		"the client certificate's instance SAN (%s) belongs to no registered provider; the instance must register again",
		strings.Join(cert.DNSNames, ", "))
}

// sameInstance holds a refresh CSR to the identity and instance of the client certificate.
func sameInstance(csr *x509.CertificateRequest, cert *x509.Certificate, suffix, instanceID string) error {
	if csr.Subject.CommonName != cert.Subject.CommonName {
		return refuse(ErrIdentityMismatch, "csr", "subject CN %q is not the client certificate's %q; a refresh keeps its identity",
			csr.Subject.CommonName, cert.Subject.CommonName)
	}
	id, err := instanceIDOf("csr", csr.DNSNames, suffix)
	if err != nil {
		return err
	}
	if id != instanceID {
		return refuse(ErrIdentityMismatch, "csr", "instance id %q is not the client certificate's %q; a refresh keeps its instance", id, instanceID)
	}
	want := make([]string, len(cert.URIs))
	for i, u := range cert.URIs {
		want[i] = u.String()
	}
	for _, u := range csr.URIs {
		if !slices.Contains(want, u.String()) {
			return refuse(ErrIdentityMismatch, "csr", "URI SAN %q is not the client certificate's %s", u, strings.Join(want, ", "))
		}
	}
	return nil
}

// sansOf lists a CSR's names for the provider.
func sansOf(csr *x509.CertificateRequest) confirm.SANs {
	out := confirm.SANs{DNS: slices.Clone(csr.DNSNames)}
	for _, u := range csr.URIs {
		out.URI = append(out.URI, u.String())
	}
	return out
}

// issuedOf describes a committed certificate from the template it was signed from (what the
// DER says, so it is not parsed back).
func issuedOf(iss *ca.Issued, auth *ca.Authority, instanceID string, inst *meshcav1.Instance) (*Issued, error) {
	t := iss.Template
	id, err := x509svid.IDFromCert(t)
	if err != nil {
		return nil, err
	}
	return &Issued{
		Chain: iss.Chain, NotAfter: t.NotAfter, BundlePEM: auth.BundlePEM(), Serial: t.SerialNumber.Text(16),
		SPIFFEID: id, InstanceID: instanceID, Instance: inst,
	}, nil
}

// orDefault returns v, or def when v is empty.
func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
