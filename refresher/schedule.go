package refresher

import "time"

// SecretPoll is how often a credential whose login was refused looks at its
// secret for a change (a changed secret is tried at once, not after the
// backoff).
const SecretPoll = 10 * time.Second

// ExpireAt is when a session expiring at expires enters the safety margin
// for its lifetime: from then on it is never served.
func (p Policy) ExpireAt(expires time.Time, lifetime time.Duration) time.Time {
	return expires.Add(-p.MarginFor(lifetime))
}

// RetryAt is when the next login is tried after a failure at now whose
// backoff is wait. A refused login (refused true) looks at its secret every
// SecretPoll meanwhile: a changed one is tried at once.
func RetryAt(now time.Time, wait time.Duration, refused bool) time.Time {
	if refused && wait > SecretPoll {
		return now.Add(SecretPoll)
	}
	return now.Add(wait)
}

// JWTRenewAt returns when the JWTs of a session expiring at sessionExpires
// should be renewed (getJwtToken / getIdentityToken, not a new login): at the
// refresh point, measured from now, of the earliest JWT that would expire
// before its session. A zero expiry is a JWT whose expiry is unknown (or no
// JWT): it never needs renewing on its own. The zero time means no renewal.
func (p Policy) JWTRenewAt(now, sessionExpires time.Time, jwtExpiries ...time.Time) time.Time {
	var due time.Time
	for _, exp := range jwtExpiries {
		// A JWT's expiry is in whole seconds: one that ends within a second
		// of its session ends with it.
		if exp.IsZero() || !exp.Before(sessionExpires.Add(-MinMargin)) {
			continue
		}
		if at := p.RefreshAt(now, exp); due.IsZero() || at.Before(due) {
			due = at
		}
	}
	return due
}

// FollowParent decides whether a credential made on top of a parent's
// session (a pin, by switchUser) waits for the parent's next refresh rather
// than refreshing on its own: the parent's new session makes the child
// switch again anyway. It waits when the parent is not failing and will
// refresh (at parentNext) before the child's deadline: its expiry less two
// margins, leaving room for the parent's login and the switch after it. It
// returns when to look again (just after the parent's refresh).
func FollowParent(now, childExpires time.Time, childMargin time.Duration, parentNext time.Time, parentFailing bool) (time.Time, bool) {
	deadline := childExpires.Add(-2 * childMargin)
	if parentFailing || parentNext.IsZero() || !parentNext.After(now) || !parentNext.Before(deadline) {
		return time.Time{}, false
	}
	return parentNext.Add(time.Second), true
}
