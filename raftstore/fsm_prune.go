package raftstore

import (
	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// pruneExpired walks an expiry index from the oldest entry and removes, through drop, every
// record whose time is before cutoff, at most limit of them (0: no limit). It returns the
// new index, how many it removed, and whether it stopped at the limit with work left.
func pruneExpired(index *table[string, struct{}], cutoff int64, limit uint32, drop func(key string)) (*table[string, struct{}], uint64, bool) {
	var n uint64
	it := index.Iterator() // iterates the version before the deletes: persistent tables allow it
	for !it.Done() {
		k, _, _ := it.Next()
		if expiryTime(k) >= cutoff {
			return index, n, false
		}
		if limit > 0 && n == uint64(limit) {
			return index, n, true
		}
		drop(k[8:])
		index = index.Delete(k)
		n++
	}
	return index, n, false
}

func applyPrune(tx *txn, c *meshcav1.PruneCommand) outcome {
	cutoff, limit := c.GetCutoff(), c.GetLimit()
	if cutoff <= 0 {
		return refusal(codeInvalid, "prune.cutoff: %d, must be a positive Unix time in nanoseconds", cutoff)
	}
	if cutoff > tx.now {
		return refusal(codeInvalid, "prune.cutoff: %d is after the command time %d; only the past can be pruned", cutoff, tx.now)
	}
	res := &meshcav1.PruneResult{}
	var more bool

	// A certificate takes with it the key use it made first (its not_after is the
	// certificate's) and its revocation (an expired certificate needs no CRL entry).
	tx.certExpiry, res.Certs, more = pruneExpired(tx.certExpiry, cutoff, limit, func(serial string) {
		if c, ok := tx.certs.Get(serial); ok {
			spki := string(c.GetSpkiSha256())
			if ku, ok := tx.keyUses.Get(spki); ok && ku.GetSerial() == serial {
				tx.keyUses = tx.keyUses.Delete(spki)
				res.KeyUses++
			}
		}
		if _, ok := tx.revocations.Get(serial); ok {
			tx.revocations = tx.revocations.Delete(serial)
			res.Revocations++
		}
		tx.certs = tx.certs.Delete(serial)
	})
	res.More = res.More || more
	if res.Revocations > 0 {
		tx.bumpCRL()
	}
	tx.tokenExpiry, res.Tokens, more = pruneExpired(tx.tokenExpiry, cutoff, limit, func(jti string) {
		tx.tokens = tx.tokens.Delete(jti)
	})
	res.More = res.More || more
	tx.nonceExpiry, res.Nonces, more = pruneExpired(tx.nonceExpiry, cutoff, limit, func(key string) {
		tx.nonces = tx.nonces.Delete(key)
	})
	res.More = res.More || more

	// Events are ordered by index; times follow the log but proposers' clocks may differ a
	// little, so stop at the first event that is not older than the cutoff.
	it := tx.events.Iterator()
	for !it.Done() {
		idx, ev, _ := it.Next()
		if ev.GetTime() >= cutoff {
			break
		}
		if limit > 0 && res.Events == uint64(limit) {
			res.More = true
			break
		}
		tx.events = tx.events.Delete(idx)
		res.Events++
	}
	return success(res)
}
