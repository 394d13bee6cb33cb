package raftstore

import (
	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// pruneExpired removes from an expiry index, oldest first, every entry whose time is before
// cutoff, and the record it names through drop, at most limit of them (0: no limit). It
// returns how many it removed, and whether it stopped at the limit with work left.
func pruneExpired(index *table[string, struct{}], cutoff int64, limit uint32, drop func(key string)) (uint64, bool) {
	var n uint64
	for {
		k, _, ok := index.first()
		if !ok || expiryTime(k) >= cutoff {
			return n, false
		}
		if limit > 0 && n == uint64(limit) {
			return n, true
		}
		drop(k[8:])
		index.Delete(k)
		n++
	}
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
	res.Certs, more = pruneExpired(&tx.certExpiry, cutoff, limit, func(serial string) {
		if c, ok := tx.certs.Get(serial); ok {
			spki := string(c.GetSpkiSha256())
			if ku, ok := tx.keyUses.Get(spki); ok && ku.GetSerial() == serial {
				tx.keyUses.Delete(spki)
				res.KeyUses++
			}
		}
		if _, ok := tx.revocations.Get(serial); ok {
			tx.revocations.Delete(serial)
			res.Revocations++
		}
		tx.certs.Delete(serial)
	})
	res.More = res.More || more
	if res.Revocations > 0 {
		tx.bumpCRL()
	}
	res.Tokens, more = pruneExpired(&tx.tokenExpiry, cutoff, limit, func(jti string) {
		tx.tokens.Delete(jti)
	})
	res.More = res.More || more
	res.Nonces, more = pruneExpired(&tx.nonceExpiry, cutoff, limit, func(key string) {
		tx.nonces.Delete(key)
	})
	res.More = res.More || more

	// Events are ordered by index; times follow the log but proposers' clocks may differ a
	// little, so stop at the first event that is not older than the cutoff.
	for {
		idx, ev, ok := tx.events.first()
		if !ok || ev.GetTime() >= cutoff {
			break
		}
		if limit > 0 && res.Events == uint64(limit) {
			res.More = true
			break
		}
		tx.events.Delete(idx)
		res.Events++
	}
	return success(res)
}
