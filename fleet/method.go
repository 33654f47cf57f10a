package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Methods wraps the pool's MethodFor: each credential keeps its own way of
// logging in, and the fleet decides whether to use it or adopt the
// session another daemon made.
func (f *Fleet) Methods(inner func(config.Credential) pool.Method) func(config.Credential) pool.Method {
	return func(c config.Credential) pool.Method {
		m := inner(c)
		if m == nil {
			return nil
		}
		f.track(c)
		return &method{f: f, inner: m}
	}
}

var (
	_ pool.Method  = (*method)(nil)
	_ pool.Renewer = (*Fleet)(nil)
)

type method struct {
	f     *Fleet
	inner pool.Method
}

// HeldError is a login not attempted because another daemon of the fleet
// failed with the same credential and the hold it set has not ended. It
// unwraps to that failure, so the pool backs off as if it were its own.
type HeldError struct {
	Until time.Time
	Err   error
}

// Error names the hold's end and the failure behind it.
func (e *HeldError) Error() string {
	return "held by the fleet until " + e.Until.Format(time.RFC3339) + " after a failed login: " + e.Err.Error()
}

// Unwrap returns the failure that set the hold.
func (e *HeldError) Unwrap() error { return e.Err }

var errUndecodable = errors.New("the shared record does not decode (written by another version?)")

// Login implements pool.Method: adopt, wait, or log in and publish.
func (m *method) Login(ctx context.Context, cred config.Credential, sessions pool.Sessions) (pool.Grant, error) {
	f := m.f
	c := f.state(cred.Name)
	if c == nil {
		c = f.track(cred)
	}
	p := f.thePool()
	_, id, localErr := c.get()
	switch {
	case p == nil:
		return m.local(ctx, cred, sessions)
	case cred.FleetLocal:
		f.m.localLogins.WithLabelValues(cred.Name, reasonKeptLocal).Inc()
		return m.local(ctx, cred, sessions)
	case localErr != nil:
		f.m.localLogins.WithLabelValues(cred.Name, reasonUnreadable).Inc()
		return m.local(ctx, cred, sessions)
	}
	replacedKey := ""
	if rep, ok := pool.Replacing(ctx); ok && rep.Session != nil {
		replacedKey = rep.Session.SessionKey
	}
	// Read under c.mu, which the follower holds while it installs: either
	// its install shows here, or what it installs is newer than start.
	c.mu.Lock()
	snap, _ := p.Snapshot(cred.Name)
	if snap != nil && snap.Session != nil && snap.Session.SessionKey != replacedKey &&
		snap.Valid(f.clk.Now(), f.policy.MarginFor(time.Duration(snap.Session.SessionLength)*time.Second)) {
		// The follower installed a fresh session after the pool asked for
		// this login: that one is the answer.
		g := grantOf(snap, c)
		c.mu.Unlock()
		return g, nil
	}
	start := c.servedVersion(snap)
	c.mu.Unlock()
	f.log.Debug().Str("credential", cred.Name).Str("replacing", fingerprint(replacedKey)).
		Int64("exp", start.Exp).Uint64("gen", start.Gen).Msg("login asked")
	parentKey := ""
	if cred.Parent != "" {
		// A shared pin session is adopted only if it was switched from the
		// parent session this daemon serves.
		ps, err := sessions.Get(ctx, cred.Parent)
		if err != nil {
			return pool.Grant{}, fmt.Errorf("parent %s: %w", cred.Parent, err)
		}
		parentKey = ps.Session.SessionKey
	}
	// A record fits when it is newer than what the pool asked to replace
	// and another session than that, still valid past the margin, and (for
	// a pin) made on our parent.
	fits := func(r *record) bool {
		return r != nil && r.v.newer(start) && r.g.Session.SessionKey != replacedKey &&
			f.fresh(r.g, f.clk.Now()) && (cred.Parent == "" || r.g.ParentKey == parentKey)
	}

	rec, err := f.read(ctx, id)
	if err != nil {
		return m.trouble(ctx, c, cred, sessions, err)
	}
	if fits(rec) {
		return f.adopt(c, rec), nil
	}
	k := keysFor(f.name, cred.Name)
	token, rec, err := f.acquire(ctx, c, id, k, fits)
	if err != nil {
		return m.trouble(ctx, c, cred, sessions, err)
	}
	if token == "" {
		return f.adopt(c, rec), nil
	}
	tn := f.begin(k, cred.Name, token)
	defer tn.end()

	// Double-check under the lock: someone may have published meanwhile.
	if rec, err = f.read(ctx, id); err != nil {
		return m.trouble(ctx, c, cred, sessions, err)
	}
	if fits(rec) {
		return f.adopt(c, rec), nil
	}
	h, err := f.readHold(ctx, id)
	if err != nil {
		return m.trouble(ctx, c, cred, sessions, err)
	}
	fp := secretPrint(cred)
	if now := f.clk.Now(); h.holds(now, fp) {
		f.m.held.WithLabelValues(cred.Name).Inc()
		return pool.Grant{}, h.err(now)
	}
	g, err := m.local(ctx, cred, sessions)
	tn.stop()
	if err != nil {
		if holdable(err) && ctx.Err() == nil {
			tn.over = f.hold(ctx, id, token, h, err, fp)
		}
		return g, err
	}
	v := version{Exp: expOf(g.Session, g.ExpiresAt), Gen: start.Gen + 1}
	if rec != nil && rec.v.Gen >= v.Gen {
		v.Gen = rec.v.Gen + 1
	}
	c.mu.Lock()
	c.setServed(g, v)
	c.mu.Unlock()
	f.publishTurn(ctx, id, tn, g, v)
	return g, nil
}

// fingerprint is pool.Fingerprint, and "" for no key.
func fingerprint(key string) string {
	if key == "" {
		return ""
	}
	return pool.Fingerprint(key)
}

// grantOf hands the pool back the session it serves. Called with c.mu held.
func grantOf(snap *pool.Snapshot, c *credState) pool.Grant {
	g := pool.Grant{
		Session: snap.Session, ExpiresAt: snap.ExpiresAt, Origin: originFleet,
		Obtained: snap.ExpiresAt.Add(-time.Duration(snap.Session.SessionLength) * time.Second),
	}
	if c.servedKey == snap.Session.SessionKey {
		g.ParentKey = c.parentKey
	}
	return g
}

// local is the credential's own login, with the times it was measured
// from filled in so that the pool and the published record agree.
func (m *method) local(ctx context.Context, cred config.Credential, sessions pool.Sessions) (pool.Grant, error) {
	start := m.f.clk.Now()
	g, err := m.inner.Login(ctx, cred, sessions)
	if err != nil || g.Session == nil {
		return g, err
	}
	if g.Obtained.IsZero() {
		g.Obtained, g.ExpiresAt = start, time.Time{}
	}
	if g.ExpiresAt.IsZero() && g.Session.SessionLength > 0 {
		g.ExpiresAt = g.Obtained.Add(time.Duration(g.Session.SessionLength) * time.Second)
	}
	return g, nil
}

// trouble handles a failed step: a record this daemon cannot open keeps
// the credential local; Redis trouble means a local login after a random
// delay.
func (m *method) trouble(ctx context.Context, c *credState, cred config.Credential, sessions pool.Sessions, err error) (pool.Grant, error) {
	f := m.f
	var oe *OpenError
	if errors.As(err, &oe) || errors.Is(err, errUndecodable) {
		f.goLocal(c, err)
		f.m.localLogins.WithLabelValues(cred.Name, reasonUnreadable).Inc()
		return m.local(ctx, cred, sessions)
	}
	if ctx.Err() != nil {
		return pool.Grant{}, ctx.Err()
	}
	d := f.fallbackDelay(cred.Name)
	f.log.Warn().Str("credential", cred.Name).Err(err).Stringer("delay", d).
		Msg("Redis unreachable: logging in locally after a random delay")
	if err := sleep(ctx, d); err != nil {
		return pool.Grant{}, err
	}
	f.m.localLogins.WithLabelValues(cred.Name, reasonRedis).Inc()
	g, lerr := m.local(ctx, cred, sessions)
	if lerr == nil {
		c.mu.Lock()
		c.setServed(g, version{Exp: expOf(g.Session, g.ExpiresAt), Gen: c.served.Gen + 1})
		c.mu.Unlock()
	}
	return g, lerr
}

// fallbackDelay is the random wait before a local login while Redis is
// unreachable: within FallbackSpread and half the time the served session
// has left, so a fleet spreads its logins without letting one expire.
func (f *Fleet) fallbackDelay(name string) time.Duration {
	p := f.thePool()
	if p == nil {
		return 0
	}
	snap, ok := p.Snapshot(name)
	if !ok || snap.Session == nil {
		return 0
	}
	now := f.clk.Now()
	margin := f.policy.MarginFor(time.Duration(snap.Session.SessionLength) * time.Second)
	left := snap.ExpiresAt.Sub(now) - margin
	if left <= 0 {
		return 0
	}
	bound := min(f.opts.FallbackSpread, left/2)
	return time.Duration(f.random() * float64(bound))
}

// fresh reports whether g is valid past the safety margin at now.
func (f *Fleet) fresh(g pool.Grant, now time.Time) bool {
	return now.Add(f.policy.MarginFor(g.ExpiresAt.Sub(g.Obtained))).Before(g.ExpiresAt)
}

// adopt returns a record's session for the pool to install.
func (f *Fleet) adopt(c *credState, r *record) pool.Grant {
	c.mu.Lock()
	c.setServed(r.g, r.v)
	c.mu.Unlock()
	f.m.adopted.WithLabelValues(c.name).Inc()
	f.log.Debug().Str("credential", c.name).Str("key", pool.Fingerprint(r.g.Session.SessionKey)).Msg("adopted the fleet's session")
	return r.g
}

// acquire takes the credential's lock, or — while another daemon holds it
// — waits for a record that fits, woken by the notice or a short tick. The
// lock of a holder that died expires after the lock TTL, and the next try
// takes it. It returns the token of a lock now ours, or the record.
func (f *Fleet) acquire(ctx context.Context, c *credState, id identity, k keys, fits func(*record) bool) (string, *record, error) {
	token := newToken()
	tick := min(f.lockTTL/5, 500*time.Millisecond)
	waited := false
	for {
		notice := c.waitNotice()
		ok, err := f.tryLock(ctx, k, token)
		if err != nil {
			return "", nil, err
		}
		if ok {
			return token, nil, nil
		}
		if !waited {
			waited = true
			f.m.lockWaits.WithLabelValues(c.name).Inc()
			f.log.Debug().Str("credential", c.name).Msg("another daemon holds the lock: waiting for its session")
		}
		t := time.NewTimer(tick)
		select {
		case <-notice:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return "", nil, ctx.Err()
		}
		t.Stop()
		rec, err := f.read(ctx, id)
		if err != nil {
			return "", nil, err
		}
		if fits(rec) {
			return "", rec, nil
		}
	}
}

// keep renews the lock while its holder works; stop ends the renewals
// (before the lock is released).
func (f *Fleet) keep(k keys, token string) (stop func()) {
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(f.lockTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if ok, err := f.extend(ctx, k, token); err == nil && !ok {
					f.log.Warn().Msg("the fleet lock expired during a login; its publish will be refused if another daemon took it")
					return
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// publishTurn publishes g, ending the turn; if the lock was lost (it
// expired, or Redis restarted empty) and is free, it takes it again once.
func (f *Fleet) publishTurn(ctx context.Context, id identity, tn *turn, g pool.Grant, v version) {
	ok, err := f.publish(ctx, id, tn.token, g, v)
	if errors.Is(err, errNotHolder) {
		if got, lerr := f.tryLock(ctx, tn.k, tn.token); lerr == nil && got {
			ok, err = f.publish(ctx, id, tn.token, g, v)
		}
	}
	tn.over = err == nil || errors.Is(err, errNotHolder)
	switch {
	case err != nil:
		f.log.Warn().Str("credential", id.name).Err(err).Msg("could not publish the new session to the fleet; it is published when Redis answers again")
	case !ok:
		f.log.Info().Str("credential", id.name).Msg("the fleet already holds a newer session; this one was not published")
	default:
		f.log.Debug().Str("credential", id.name).Str("key", pool.Fingerprint(g.Session.SessionKey)).Msg("published the session to the fleet")
	}
}

// holdable reports whether a login failure holds the whole fleet: refused
// logins (1050–1053), the hourly quota (1002) and the rate limit (429).
func holdable(err error) bool {
	switch refresher.Classify(err) {
	case refresher.Refused, refresher.Quota, refresher.RateLimited:
		return true
	}
	return false
}

// secretPrint identifies the secret the credential logs in with (inside
// the encrypted hold only), so that a daemon whose secret changed is not
// held by a refusal of the old one.
func secretPrint(c config.Credential) string {
	v, err := c.LoginSecret().Read()
	if err != nil {
		return "unreadable"
	}
	return pool.Fingerprint(c.Username + "\x00" + v)
}

// holds reports whether h stops a login with the secret fp at now. A
// refused login holds only the daemons whose secret was refused.
func (h *holdPayload) holds(now time.Time, fp string) bool {
	if h == nil || !now.Before(time.UnixMilli(h.Until)) {
		return false
	}
	if h.Code >= upstream.CodeLoginMissing && h.Code <= upstream.CodeLoginRefused {
		return slices.Contains(h.Refused, fp)
	}
	return true
}

func (h *holdPayload) err(now time.Time) error {
	until := time.UnixMilli(h.Until)
	return &HeldError{Until: until, Err: &upstream.Error{
		Request: h.Request, Code: h.Code, HTTPStatus: h.HTTPStatus, RetryAfter: until.Sub(now),
	}}
}

// hold records a failed login fleet-wide, continuing the fleet's count of
// failures in a row, and holds every daemon for the schedule's wait. It
// reports whether the hold was written (which ends the turn).
func (f *Fleet) hold(ctx context.Context, id identity, token string, prev *holdPayload, err error, fp string) bool {
	now := f.clk.Now()
	h := holdPayload{Attempts: 1}
	if prev != nil {
		h.Attempts, h.Refused = prev.Attempts+1, prev.Refused
	}
	wait := f.policy.Backoff(err, h.Attempts, now)
	h.Until = now.Add(wait).UnixMilli()
	var ue *upstream.Error
	if errors.As(err, &ue) {
		h.Request, h.Code, h.HTTPStatus = ue.Request, ue.Code, ue.HTTPStatus
	}
	if refresher.Classify(err) == refresher.Refused && !slices.Contains(h.Refused, fp) {
		h.Refused = append(h.Refused, fp)
		if len(h.Refused) > 8 {
			h.Refused = h.Refused[len(h.Refused)-8:]
		}
	}
	if werr := f.writeHold(ctx, id, token, h, f.policy.RefusedMax); werr != nil {
		f.log.Warn().Str("credential", id.name).Err(werr).Msg("could not share the failure hold")
		return false
	}
	f.log.Warn().Str("credential", id.name).Err(err).Int("fleetAttempt", h.Attempts).Stringer("holdFor", wait).
		Msg("login failed: the whole fleet holds off")
	return true
}

// RenewJWT implements pool.Renewer: one getJwtToken/getIdentityToken per
// renewal for the whole fleet. A daemon adopts JWTs another published for
// the same session, else renews under the lock and publishes them.
func (f *Fleet) RenewJWT(ctx context.Context, cur *pool.Snapshot, fetch func(context.Context) (*upstream.Session, error)) (*upstream.Session, error) {
	c := f.state(cur.Name)
	if c == nil || f.thePool() == nil || cur.Session == nil {
		return fetch(ctx)
	}
	conf, id, localErr := c.get()
	c.mu.Lock()
	start := c.servedVersion(cur)
	parentKey := c.parentKey
	c.mu.Unlock()
	if conf.FleetLocal || localErr != nil {
		return fetch(ctx)
	}
	key := cur.Session.SessionKey
	f.log.Debug().Str("credential", cur.Name).Str("key", pool.Fingerprint(key)).Int64("exp", start.Exp).Uint64("gen", start.Gen).Msg("JWT renewal asked")
	// The record fits when it holds this session with newer JWTs, or a
	// newer session altogether: the follower installs that one, and these
	// JWTs are not worth renewing.
	renewed := func(r *record) bool { return r != nil && r.g.Session.SessionKey == key && r.v.newer(start) }
	superseded := func(r *record) bool {
		return r != nil && r.g.Session.SessionKey != key && r.v.newer(start) && f.fresh(r.g, f.clk.Now())
	}
	fits := func(r *record) bool { return renewed(r) || superseded(r) }
	use := func(r *record) (*upstream.Session, error) {
		if renewed(r) {
			return f.adopt(c, r).Session, nil
		}
		f.install(c, r)
		return cur.Session, nil // not onto the pool's new session: nothing happens
	}
	trouble := func(err error) (*upstream.Session, error) {
		var oe *OpenError
		if errors.As(err, &oe) || errors.Is(err, errUndecodable) {
			f.goLocal(c, err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return fetch(ctx)
	}
	rec, err := f.read(ctx, id)
	if err != nil {
		return trouble(err)
	}
	if fits(rec) {
		return use(rec)
	}
	k := keysFor(f.name, cur.Name)
	token, rec, err := f.acquire(ctx, c, id, k, fits)
	if err != nil {
		return trouble(err)
	}
	if token == "" {
		return use(rec)
	}
	tn := f.begin(k, cur.Name, token)
	defer tn.end()
	if rec, err = f.read(ctx, id); err != nil {
		return trouble(err)
	}
	if fits(rec) {
		return use(rec)
	}
	sess, err := fetch(ctx)
	tn.stop()
	if err != nil {
		return nil, err
	}
	g := pool.Grant{
		Session: sess, ExpiresAt: cur.ExpiresAt,
		Obtained:  cur.ExpiresAt.Add(-time.Duration(sess.SessionLength) * time.Second),
		ParentKey: parentKey,
	}
	v := version{Exp: start.Exp, Gen: start.Gen + 1}
	if rec != nil && rec.v.Exp == v.Exp && rec.v.Gen >= v.Gen {
		v.Gen = rec.v.Gen + 1
	}
	c.mu.Lock()
	c.setServed(g, v)
	c.mu.Unlock()
	f.publishTurn(ctx, id, tn, g, v)
	return sess, nil
}
