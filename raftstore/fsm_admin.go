package raftstore

import (
	"slices"
	"strings"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Limits on administrative records.
const (
	maxAdmins        = 256
	maxServiceKeys   = 64
	maxLaunchGrants  = 256
	maxPublicKeySize = 16 << 10
	maxEndpointLen   = 2048
)

// normalizeStrings sorts and de-duplicates a list, so the stored record does not depend on the
// order a client sent it in.
func normalizeStrings(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}

func applyPutDomain(tx *txn, c *meshcav1.PutDomainCommand) outcome {
	d := c.GetDomain()
	if d == nil {
		return refusal(codeInvalid, "put_domain.domain: required")
	}
	if err := validateDottedName(d.GetName()); err != nil {
		return refusal(codeInvalid, "put_domain.domain.name: %v", err)
	}
	if len(d.GetAdmins()) > maxAdmins {
		return refusal(codeInvalid, "put_domain.domain.admins: %d principals, at most %d", len(d.GetAdmins()), maxAdmins)
	}
	for i, a := range d.GetAdmins() {
		if err := validateID(a); err != nil {
			return refusal(codeInvalid, "put_domain.domain.admins[%d]: %v", i, err)
		}
	}
	old, exists := tx.domains.Get(d.GetName())
	if o := checkPutMode("put_domain.domain", c.GetMode(), exists, d.GetName()); o != nil {
		return *o
	}
	rec := &meshcav1.Domain{Name: d.GetName(), Admins: normalizeStrings(d.GetAdmins()), Created: tx.now, Updated: tx.now}
	if exists {
		rec.Created = old.GetCreated()
	}
	tx.domains.Set(rec.GetName(), rec)
	tx.event(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "domain/"+rec.GetName(), "", "domain put")
	return success(rec)
}

// applyChangeDomainAdmins adds and removes admins against the domain as it is now.
func applyChangeDomainAdmins(tx *txn, c *meshcav1.ChangeDomainAdminsCommand) outcome {
	name := c.GetName()
	if err := validateDottedName(name); err != nil {
		return refusal(codeInvalid, "change_domain_admins.name: %v", err)
	}
	if len(c.GetAdd())+len(c.GetRemove()) == 0 {
		return refusal(codeInvalid, "change_domain_admins: add or remove at least one principal")
	}
	if len(c.GetAdd()) > maxAdmins {
		return refusal(codeInvalid, "change_domain_admins.add: %d principals, at most %d", len(c.GetAdd()), maxAdmins)
	}
	if len(c.GetRemove()) > maxAdmins {
		return refusal(codeInvalid, "change_domain_admins.remove: %d principals, at most %d", len(c.GetRemove()), maxAdmins)
	}
	for i, a := range c.GetAdd() {
		if err := validateID(a); err != nil {
			return refusal(codeInvalid, "change_domain_admins.add[%d]: %v", i, err)
		}
	}
	old, ok := tx.domains.Get(name)
	if !ok {
		return refusal(codeNotFound, "change_domain_admins.name: domain %q does not exist", name)
	}
	admins := append(slices.Clone(old.GetAdmins()), c.GetAdd()...)
	admins = slices.DeleteFunc(admins, func(a string) bool { return slices.Contains(c.GetRemove(), a) })
	admins = normalizeStrings(admins)
	if len(admins) > maxAdmins {
		return refusal(codeInvalid, "change_domain_admins.add: the domain would have %d admins, at most %d", len(admins), maxAdmins)
	}
	rec := &meshcav1.Domain{Name: name, Admins: admins, Created: old.GetCreated(), Updated: tx.now}
	tx.domains.Set(name, rec)
	tx.event(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "domain/"+name, "", "domain admins changed")
	return success(rec)
}

func applyDeleteDomain(tx *txn, c *meshcav1.DeleteDomainCommand) outcome {
	name := c.GetName()
	if _, ok := tx.domains.Get(name); !ok {
		return refusal(codeNotFound, "delete_domain.name: domain %q does not exist", name)
	}
	if svcs := tx.Services(name); len(svcs) > 0 {
		return refusal(codeFailedPrecondition, "delete_domain.name: domain %q still has %d services (first: %q); delete them first",
			name, len(svcs), Identity(svcs[0].GetDomain(), svcs[0].GetName()))
	}
	tx.domains.Delete(name)
	tx.event(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "domain/"+name, "", "domain deleted")
	return success(nil)
}

// validateServiceKey checks one registered service key.
func validateServiceKey(field string, k *meshcav1.ServiceKey) *outcome {
	if k == nil {
		return deny(codeInvalid, "%s: required", field)
	}
	if err := validateID(k.GetVersion()); err != nil {
		return deny(codeInvalid, "%s.version: %v", field, err)
	}
	if n := len(k.GetPublicKey()); n == 0 || n > maxPublicKeySize {
		return deny(codeInvalid, "%s.public_key: %d bytes, want a DER SubjectPublicKeyInfo of 1 to %d bytes", field, n, maxPublicKeySize)
	}
	return nil
}

func applyPutService(tx *txn, c *meshcav1.PutServiceCommand) outcome {
	svc := c.GetService()
	if svc == nil {
		return refusal(codeInvalid, "put_service.service: required")
	}
	if err := validateIdentityParts(svc.GetDomain(), svc.GetName()); err != nil {
		return refusal(codeInvalid, "put_service.service: %v", err)
	}
	id := Identity(svc.GetDomain(), svc.GetName())
	if len(svc.GetKeys()) > maxServiceKeys {
		return refusal(codeInvalid, "put_service.service.keys: %d keys, at most %d", len(svc.GetKeys()), maxServiceKeys)
	}
	keys := make([]*meshcav1.ServiceKey, 0, len(svc.GetKeys()))
	versions := map[string]bool{}
	for i, k := range svc.GetKeys() {
		if o := validateServiceKey(indexed("put_service.service.keys", i), k); o != nil {
			return *o
		}
		if versions[k.GetVersion()] {
			return refusal(codeInvalid, "put_service.service.keys[%d].version: %q appears twice", i, k.GetVersion())
		}
		versions[k.GetVersion()] = true
		added := k.GetAdded()
		if added == 0 {
			added = tx.now
		}
		keys = append(keys, &meshcav1.ServiceKey{Version: k.GetVersion(), PublicKey: k.GetPublicKey(), Added: added})
	}
	slices.SortFunc(keys, func(a, b *meshcav1.ServiceKey) int { return strings.Compare(a.GetVersion(), b.GetVersion()) })
	if len(svc.GetLaunchGrants()) > maxLaunchGrants {
		return refusal(codeInvalid, "put_service.service.launch_grants: %d patterns, at most %d", len(svc.GetLaunchGrants()), maxLaunchGrants)
	}
	for i, g := range svc.GetLaunchGrants() {
		if err := ValidateGrantPattern(g); err != nil {
			return refusal(codeInvalid, "put_service.service.launch_grants[%d]: %v", i, err)
		}
	}
	if _, ok := tx.domains.Get(svc.GetDomain()); !ok {
		return refusal(codeNotFound, "put_service.service.domain: domain %q does not exist", svc.GetDomain())
	}
	old, exists := tx.services.Get(id)
	if o := checkPutMode("put_service.service", c.GetMode(), exists, id); o != nil {
		return *o
	}
	rec := &meshcav1.Service{
		Domain: svc.GetDomain(), Name: svc.GetName(), Keys: keys,
		LaunchGrants: normalizeStrings(svc.GetLaunchGrants()), Created: tx.now, Updated: tx.now,
	}
	if exists {
		rec.Created = old.GetCreated()
	}
	tx.services.Set(id, rec)
	tx.event(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "service/"+id, "", "service put")
	return success(rec)
}

// lookupService finds a service by identity for the commands that change one part of it.
func (tx *txn) lookupService(field, identity string) (*meshcav1.Service, *outcome) {
	if _, _, err := SplitIdentity(identity); err != nil {
		return nil, deny(codeInvalid, "%s: %v", field, err)
	}
	svc, ok := tx.services.Get(identity)
	if !ok {
		return nil, deny(codeNotFound, "%s: service %q does not exist", field, identity)
	}
	return svc, nil
}

// putServiceChange stores a changed copy of a service and records the change.
func (tx *txn) putServiceChange(svc *meshcav1.Service, detail string) outcome {
	svc.Updated = tx.now
	id := Identity(svc.GetDomain(), svc.GetName())
	tx.services.Set(id, svc)
	tx.event(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "service/"+id, "", detail)
	return success(svc)
}

func applyDeleteService(tx *txn, c *meshcav1.DeleteServiceCommand) outcome {
	if _, o := tx.lookupService("delete_service.identity", c.GetIdentity()); o != nil {
		return *o
	}
	tx.services.Delete(c.GetIdentity())
	tx.event(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "service/"+c.GetIdentity(), "", "service deleted")
	return success(nil)
}

func applyAddServiceKey(tx *txn, c *meshcav1.AddServiceKeyCommand) outcome {
	svc, o := tx.lookupService("add_service_key.identity", c.GetIdentity())
	if o != nil {
		return *o
	}
	if o := validateServiceKey("add_service_key.key", c.GetKey()); o != nil {
		return *o
	}
	if len(svc.GetKeys()) >= maxServiceKeys {
		return refusal(codeFailedPrecondition, "add_service_key.key: service %q already has %d keys, at most %d", c.GetIdentity(), len(svc.GetKeys()), maxServiceKeys)
	}
	for _, k := range svc.GetKeys() {
		if k.GetVersion() == c.GetKey().GetVersion() {
			return refusal(codeAlreadyExists, "add_service_key.key.version: service %q already has key version %q", c.GetIdentity(), k.GetVersion())
		}
	}
	svc = clone(svc)
	svc.Keys = append(svc.Keys, &meshcav1.ServiceKey{Version: c.GetKey().GetVersion(), PublicKey: c.GetKey().GetPublicKey(), Added: tx.now})
	slices.SortFunc(svc.Keys, func(a, b *meshcav1.ServiceKey) int { return strings.Compare(a.GetVersion(), b.GetVersion()) })
	return tx.putServiceChange(svc, "key added: "+c.GetKey().GetVersion())
}

func applyRemoveServiceKey(tx *txn, c *meshcav1.RemoveServiceKeyCommand) outcome {
	svc, o := tx.lookupService("remove_service_key.identity", c.GetIdentity())
	if o != nil {
		return *o
	}
	i := slices.IndexFunc(svc.GetKeys(), func(k *meshcav1.ServiceKey) bool { return k.GetVersion() == c.GetVersion() })
	if i < 0 {
		return refusal(codeNotFound, "remove_service_key.version: service %q has no key version %q", c.GetIdentity(), c.GetVersion())
	}
	svc = clone(svc)
	svc.Keys = slices.Delete(svc.Keys, i, i+1)
	return tx.putServiceChange(svc, "key removed: "+c.GetVersion())
}

func applyAddLaunchGrant(tx *txn, c *meshcav1.AddLaunchGrantCommand) outcome {
	svc, o := tx.lookupService("add_launch_grant.identity", c.GetIdentity())
	if o != nil {
		return *o
	}
	if err := ValidateGrantPattern(c.GetPattern()); err != nil {
		return refusal(codeInvalid, "add_launch_grant.pattern: %v", err)
	}
	if slices.Contains(svc.GetLaunchGrants(), c.GetPattern()) {
		return refusal(codeAlreadyExists, "add_launch_grant.pattern: service %q already grants launch to %q", c.GetIdentity(), c.GetPattern())
	}
	if len(svc.GetLaunchGrants()) >= maxLaunchGrants {
		return refusal(codeFailedPrecondition, "add_launch_grant.pattern: service %q already has %d grants, at most %d", c.GetIdentity(), len(svc.GetLaunchGrants()), maxLaunchGrants)
	}
	svc = clone(svc)
	svc.LaunchGrants = normalizeStrings(append(svc.LaunchGrants, c.GetPattern()))
	return tx.putServiceChange(svc, "launch grant added: "+c.GetPattern())
}

func applyRemoveLaunchGrant(tx *txn, c *meshcav1.RemoveLaunchGrantCommand) outcome {
	svc, o := tx.lookupService("remove_launch_grant.identity", c.GetIdentity())
	if o != nil {
		return *o
	}
	i := slices.Index(svc.GetLaunchGrants(), c.GetPattern())
	if i < 0 {
		return refusal(codeNotFound, "remove_launch_grant.pattern: service %q has no launch grant %q", c.GetIdentity(), c.GetPattern())
	}
	svc = clone(svc)
	svc.LaunchGrants = slices.Delete(svc.LaunchGrants, i, i+1)
	return tx.putServiceChange(svc, "launch grant removed: "+c.GetPattern())
}

func applyPutProvider(tx *txn, c *meshcav1.PutProviderCommand) outcome {
	p := c.GetProvider()
	if p == nil {
		return refusal(codeInvalid, "put_provider.provider: required")
	}
	if err := validateProviderName(p.GetName()); err != nil {
		return refusal(codeInvalid, "put_provider.provider.name: %v", err)
	}
	if err := validateDNSName(p.GetDnsSuffix()); err != nil {
		return refusal(codeInvalid, "put_provider.provider.dns_suffix: %v", err)
	}
	if len(p.GetConfirmEndpoint()) > maxEndpointLen {
		return refusal(codeInvalid, "put_provider.provider.confirm_endpoint: longer than %d characters", maxEndpointLen)
	}
	old, exists := tx.providers.Get(p.GetName())
	if o := checkPutMode("put_provider.provider", c.GetMode(), exists, p.GetName()); o != nil {
		return *o
	}
	var nested *meshcav1.Provider
	tx.providers.scan(func(name string, other *meshcav1.Provider) bool {
		if name != p.GetName() && dnsNamesNest(p.GetDnsSuffix(), other.GetDnsSuffix()) {
			nested = other
			return false
		}
		return true
	})
	if nested != nil {
		return refusal(codeAlreadyExists, "put_provider.provider.dns_suffix: %q equals or nests with provider %q's suffix %q; suffixes are unique across providers",
			p.GetDnsSuffix(), nested.GetName(), nested.GetDnsSuffix())
	}
	rec := &meshcav1.Provider{
		Name: p.GetName(), DnsSuffix: p.GetDnsSuffix(), ConfirmEndpoint: p.GetConfirmEndpoint(),
		Enabled: p.GetEnabled(), RefreshNeedsConfirmation: p.GetRefreshNeedsConfirmation(), Created: tx.now, Updated: tx.now,
	}
	if exists {
		rec.Created = old.GetCreated()
	}
	tx.providers.Set(rec.GetName(), rec)
	tx.event(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "provider/"+rec.GetName(), "", "provider put")
	return success(rec)
}

func applyDeleteProvider(tx *txn, c *meshcav1.DeleteProviderCommand) outcome {
	if _, ok := tx.providers.Get(c.GetName()); !ok {
		return refusal(codeNotFound, "delete_provider.name: provider %q does not exist", c.GetName())
	}
	tx.providers.Delete(c.GetName())
	tx.event(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "provider/"+c.GetName(), "", "provider deleted")
	return success(nil)
}

func applySetProviderEnabled(tx *txn, c *meshcav1.SetProviderEnabledCommand) outcome {
	p, ok := tx.providers.Get(c.GetName())
	if !ok {
		return refusal(codeNotFound, "set_provider_enabled.name: provider %q does not exist", c.GetName())
	}
	p = clone(p)
	p.Enabled = c.GetEnabled()
	p.Updated = tx.now
	tx.providers.Set(p.GetName(), p)
	detail := "provider disabled"
	if p.GetEnabled() {
		detail = "provider enabled"
	}
	tx.event(meshcav1.EventKind_EVENT_KIND_CONFIG_CHANGED, "provider/"+p.GetName(), "", detail)
	return success(p)
}
