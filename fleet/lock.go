package fleet

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/erply-sessiond/erply-sessiond/internal/answer"
	"github.com/erply-sessiond/erply-sessiond/pool"
)

// Lock implements password.Locker: it takes credential name's fleet lock
// for a password change and keeps renewing it until unlock, so that no
// other daemon of the fleet logs in (with the password being replaced) or
// rotates meanwhile; while another daemon holds the lock it waits, serving
// as usual. unlock publishes the session the change installed in the pool
// (its origin, "password changed", is not a login of the fleet's, so
// nothing else would publish it) before it lets the lock go, in one fenced
// script: the others adopt it with no login. Their own sessions died at
// Erply with the change, so the version published is made newer than the
// shared record's whatever the session's expiry.
//
// A credential that is not sharing (kept local, or a record this daemon
// cannot open) takes no lock: it rotates as it would without fleet mode.
// With Redis unreachable Lock refuses with 503 rather than rotate without
// the lock; see errFleetUnavailable.
func (f *Fleet) Lock(ctx context.Context, name string) (unlock func(), err error) {
	c := f.state(name)
	if c == nil {
		return func() {}, nil // not a credential the fleet wraps
	}
	conf, _, localErr := c.get()
	if conf.FleetLocal || localErr != nil {
		f.log.Info().Str("credential", name).Msg("password change without the fleet lock: this credential is not sharing its session")
		return func() {}, nil
	}
	k := keysFor(f.name, name)
	token := newToken()
	tick := min(f.lockTTL/5, 500*time.Millisecond)
	waited := false
	for {
		notice := c.waitNotice()
		ok, err := f.tryLock(ctx, k, token)
		if err != nil {
			if ctx.Err() != nil {
				return nil, errLockGaveUp
			}
			f.log.Warn().Str("credential", name).Err(err).
				Msg("password change refused: the fleet lock cannot be taken while Redis is unreachable")
			return nil, errFleetUnavailable(err, f.opts.BreakerCooldown)
		}
		if ok {
			break
		}
		if !waited {
			waited = true
			f.m.lockWaits.WithLabelValues(name).Inc()
			f.log.Info().Str("credential", name).Msg("password change waits for another daemon holding the fleet lock")
		}
		t := time.NewTimer(tick)
		select {
		case <-notice:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, errLockGaveUp
		}
		t.Stop()
	}
	before := ""
	c.mu.Lock()
	c.changing++
	if p := f.thePool(); p != nil {
		if snap, ok := p.Snapshot(name); ok && snap.Session != nil {
			before = snap.Session.SessionKey
		}
	}
	c.mu.Unlock()
	tn := f.begin(k, name, token)
	f.log.Debug().Str("credential", name).Msg("holding the fleet lock for a password change")
	return func() { f.unlockChange(c, tn, before) }, nil
}

// errFleetUnavailable is the answer to a password change while Redis is
// unreachable. Refusing is the safe side: without the lock another daemon
// reading the same password file may log in between Erply's change and the
// rename and be refused (feeding Erply's wrong-password counter, N daemons
// N times), and without the publish every other daemon — whose session
// the change killed — logs in on its own. A rotation is never urgent (an
// expired password still logs in; Erply only flags it), so it waits for
// Redis instead.
func errFleetUnavailable(cause error, retry time.Duration) *answer.Error {
	return &answer.Error{Status: http.StatusServiceUnavailable, Code: "fleet_unavailable", RetryAfter: retry,
		Message: "fleet mode: the credential's lock cannot be taken (" + cause.Error() +
			"); the password is unchanged: rotate it again once Redis answers"}
}

// errLockGaveUp is the answer when the rotation ended (its caller left or
// its time ran out) before it had the lock, mostly because another daemon
// held it.
var errLockGaveUp = answer.New(http.StatusServiceUnavailable, "fleet_lock_busy",
	"fleet mode: the password change ended before it got the credential's lock (another daemon held it, or the caller left); the password is unchanged")

// unlockChange ends a password change's hold of the lock: it publishes the
// session installed since Lock, if any, and releases the lock.
func (f *Fleet) unlockChange(c *credState, tn *turn, before string) {
	tn.stop()
	defer tn.end()
	defer func() {
		c.mu.Lock()
		c.changing--
		c.mu.Unlock()
	}()
	p := f.thePool()
	if p == nil {
		return
	}
	snap, ok := p.Snapshot(c.name)
	if !ok || snap.Session == nil || snap.Session.SessionKey == before {
		return // the change did not happen: the release tells the waiters
	}
	_, id, localErr := c.get()
	if localErr != nil {
		return
	}
	ctx, cancel := context.WithTimeout(f.ctx, 3*f.timeout)
	defer cancel()
	g := pool.Grant{
		Session: snap.Session, ExpiresAt: snap.ExpiresAt,
		Obtained: snap.ExpiresAt.Add(-time.Duration(snap.Session.SessionLength) * time.Second),
	}
	c.mu.Lock()
	if c.servedKey == snap.Session.SessionKey {
		c.mu.Unlock()
		return // adopted from the fleet: the lock was lost and another published
	}
	v := version{Exp: expOf(snap.Session, snap.ExpiresAt), Gen: c.served.Gen + 1}
	c.mu.Unlock()
	rec, err := f.read(ctx, id)
	var oe *OpenError
	switch {
	case errors.As(err, &oe) || errors.Is(err, errUndecodable):
		f.goLocal(c, err)
		return
	case err == nil && rec != nil && !v.newer(rec.v):
		// The sessions the record holds are dead at Erply: this one wins.
		v = version{Exp: rec.v.Exp, Gen: rec.v.Gen + 1}
	}
	c.mu.Lock()
	c.setServed(g, v)
	c.mu.Unlock()
	f.publishTurn(ctx, id, tn, g, v)
}
