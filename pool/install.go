package pool

import (
	"errors"
	"fmt"
	"time"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Install makes g the credential's current session: the same step a login
// takes, for a session that came from elsewhere (restored from disk, adopted
// from a fleet, returned by changePassword). origin names where it came
// from in the log. The session must be complete (a key and a lifetime);
// one that is not valid for at least the safety margin is refused.
func (p *Pool) Install(name string, g Grant, origin string) (*Snapshot, error) {
	e := p.entry(name)
	if e == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownCredential, truncate(name))
	}
	if _, err := p.complete(&g); err != nil {
		return nil, err
	}
	if now := p.clk.Now(); !now.Add(p.policy.MarginFor(g.ExpiresAt.Sub(g.Obtained))).Before(g.ExpiresAt) {
		return nil, fmt.Errorf("credential %s: the session from %s expires at %s, inside the safety margin", name, origin, g.ExpiresAt.Format(time.RFC3339))
	}
	return p.install(e, g, origin), nil
}

// complete checks a grant and fills in its times. A lifetime longer than
// was asked for, or than Erply grants at all, is cut to that (clamped
// reports it): an overflowing reply must neither keep a session from ever
// being refreshed nor wrap around to a tiny one.
func (p *Pool) complete(g *Grant) (clamped int64, err error) {
	if g.Session == nil || g.Session.SessionKey == "" {
		return 0, fmt.Errorf("%w: no session key", upstream.ErrBadReply)
	}
	if g.Session.SessionLength <= 0 {
		return 0, fmt.Errorf("%w: session has no lifetime", upstream.ErrBadReply)
	}
	limit := int64(config.MaxSessionLength)
	if g.Asked > 0 && int64(g.Asked) < limit {
		limit = int64(g.Asked)
	}
	if g.Session.SessionLength > limit {
		clamped = g.Session.SessionLength
		s := *g.Session
		s.SessionLength = limit
		g.Session = &s
	}
	if g.Obtained.IsZero() {
		g.Obtained = p.clk.Now()
	}
	if g.ExpiresAt.IsZero() {
		g.ExpiresAt = g.Obtained.Add(time.Duration(g.Session.SessionLength) * time.Second)
	}
	if !g.ExpiresAt.After(g.Obtained) {
		return 0, errors.New("session expires before it was obtained")
	}
	return clamped, nil
}

// install is the one step every new session goes through, whatever made it:
// it clears the failure state, publishes the snapshot (subscribers — sinks,
// status — hear of it), schedules the refresh, expiry and JWT renewal, and
// makes the credentials built on this one (pins) switch again.
func (p *Pool) install(e *entry, g Grant, origin string) *Snapshot {
	isLogin := isLoginTrigger(origin)
	e.mu.Lock()
	e.failures, e.notBefore, e.refusedWith, e.jwtFailures = 0, time.Time{}, "", 0
	if isLogin {
		e.lastLogin, e.lastLifetime = g.Obtained, g.ExpiresAt.Sub(g.Obtained)
	}
	if g.ParentKey != "" {
		e.parentKey = g.ParentKey
	}
	e.installedAt = p.clk.Now()
	cred := e.cred
	e.mu.Unlock()
	lifetime := g.ExpiresAt.Sub(g.Obtained)
	refreshAt := p.policy.RefreshAt(g.Obtained, g.ExpiresAt)
	if isLogin {
		p.logins.WithLabelValues(e.name, "ok").Inc()
	}
	snap := p.publish(e, func(s *Snapshot) {
		if isLogin {
			s.Logins++
		}
		s.RefreshAt = refreshAt
		s.Session = g.Session
		s.ExpiresAt = g.ExpiresAt
		s.State = StateOK
		s.LastError = nil
		s.ClientCode = cred.ClientCode
		s.APIURL = account(cred).URL()
	})
	if snap.Removed {
		return snap
	}
	e.timer.Set(refresher.Refresh, refreshAt)
	e.timer.Set(refresher.Expire, p.policy.ExpireAt(g.ExpiresAt, lifetime))
	e.timer.Set(refresher.RenewJWT, p.jwtRenewAt(snap))
	msg := "logged in"
	if !isLogin {
		msg = "session installed"
	}
	p.log.Info().Str("credential", e.name).Str("kind", string(cred.Kind)).Str("trigger", origin).
		Str("key", Fingerprint(g.Session.SessionKey)).Time("expiresAt", g.ExpiresAt).
		Stringer("lifetime", lifetime).Time("refreshAt", refreshAt).Msg(msg)
	p.followers(e.name, g.Session.SessionKey)
	return snap
}

// isLoginTrigger reports whether why is one of the login path's triggers
// (as opposed to a foreign origin given to Install).
func isLoginTrigger(why string) bool {
	switch why {
	case whyFirst, whyExpiring, whyInvalidated, whyScheduled, whyReload, whyParent, whySecret, whyJWTGone:
		return true
	}
	return false
}

// The reasons a login is made, as logged in "trigger".
const (
	whyFirst       = "first login"
	whyExpiring    = "expiring"
	whyInvalidated = "invalidated"
	whyScheduled   = "scheduled"
	whyReload      = "reload"
	whyParent      = "parent refreshed"
	whySecret      = "secret changed"
	whyJWTGone     = "JWT renewal found the session gone"
)

// followers makes the credentials built on name's session (pins) switch
// again on its new session parentKey.
func (p *Pool) followers(name, parentKey string) {
	p.mu.RLock()
	var kids []*entry
	for _, n := range p.order {
		c := p.entries[n]
		c.mu.Lock()
		// A child that switched from this very parent session (its first
		// login raced the parent's) needs no second switch.
		if c.cred.Parent == name && c.parentKey != parentKey {
			kids = append(kids, c)
		}
		c.mu.Unlock()
	}
	p.mu.RUnlock()
	now := p.clk.Now()
	for _, k := range kids {
		if k.snap.Load().State == StateStarting {
			continue // its first login is under way or about to be, from the parent's
		}
		if p.refusedUnchanged(k, now) {
			// Its own secret was refused: a new parent session does not make
			// it right, and retrying would feed Erply's block counter.
			continue
		}
		p.loginInBackground(k, whyParent)
	}
}
