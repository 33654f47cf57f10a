package pool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

var (
	errTooShort     = errors.New("Erply granted a session too short to serve: not logging in again before a third of its lifetime has passed")
	errShuttingDown = errors.New("daemon is shutting down")
	errRemoved      = errors.New("credential removed by a reload")
)

// Get returns a snapshot whose session is valid for at least the safety
// margin, logging in (once, shared with every concurrent caller) if needed.
// A caller whose ctx ends stops waiting; the shared login goes on. After a
// failure, Get does not log in again before the backoff has passed: it
// returns an *UnavailableError with the reason and RetryAfter.
func (p *Pool) Get(ctx context.Context, name string) (*Snapshot, error) {
	e := p.entry(name)
	if e == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownCredential, truncate(name))
	}
	s := e.snap.Load()
	now := p.clk.Now()
	if s.Valid(now, p.margin(s)) {
		return s, nil
	}
	why := whyExpiring
	if s.State == StateStarting {
		why = whyFirst
	}
	return p.demand(ctx, e, s, why)
}

// Invalidate is compare-and-refresh: if staleKey is still the credential's
// current key, it logs in anew (once, however many callers report the same
// key) and returns the new session; otherwise it returns the current one.
//
// Callers cannot make it log in without bound: past ForcedBurst logins
// forced while the session was still valid (refilled at one per
// ForcedEvery), the reported key is first checked with getSessionKeyInfo.
// A key Erply still accepts is answered with the current session and no
// login; one it refuses means a login, unless the session was made less
// than ForcedEvery ago (Erply refusing the keys it just issued): then an
// *UnavailableError says so, with RetryAfter until a login is allowed.
func (p *Pool) Invalidate(ctx context.Context, name, staleKey string) (*Snapshot, error) {
	e := p.entry(name)
	if e == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownCredential, truncate(name))
	}
	s := e.snap.Load()
	if s.Session == nil || s.Session.SessionKey != staleKey {
		return p.Get(ctx, name)
	}
	snap, err := p.demand(ctx, e, s, whyInvalidated)
	if be := (*boundError)(nil); err != nil && !errors.As(err, &be) {
		p.dropIfDead(ctx, e, staleKey)
	}
	return snap, err
}

// demand is a caller's login: refused while the failure backoff lasts,
// unless a forced login asked for in the background (a parent's new
// session, a reload) is pending — that one is as good as done, so the
// caller waits for it rather than getting a 503.
func (p *Pool) demand(ctx context.Context, e *entry, s *Snapshot, why string) (*Snapshot, error) {
	force := e.pending.Load() > 0
	if wait, blocked := p.blocked(e, p.clk.Now()); blocked && !force {
		return nil, &UnavailableError{Name: e.name, Reason: s.LastError, RetryAfter: wait}
	}
	return p.login(ctx, e, s.Version, why, force)
}

// tooSoon reports whether the last login was less than a third of its
// session's lifetime ago.
func (p *Pool) tooSoon(e *entry, now time.Time) (time.Duration, bool) {
	e.mu.Lock()
	last, life := e.lastLogin, e.lastLifetime
	e.mu.Unlock()
	if last.IsZero() {
		return 0, false
	}
	next := last.Add(life / 3)
	return next.Sub(now), now.Before(next)
}

// refusedUnchanged reports whether e's last login was refused (or failed
// for good) and its secret is still the one refused, within the backoff.
func (p *Pool) refusedUnchanged(e *entry, now time.Time) bool {
	e.mu.Lock()
	nb, refused, cred := e.notBefore, e.refusedWith, e.cred
	e.mu.Unlock()
	return refused != "" && now.Before(nb) && secretFingerprint(cred) == refused
}

// blocked reports whether an on-demand login must wait for the backoff.
// A refused login may go again at once when its secret has changed.
func (p *Pool) blocked(e *entry, now time.Time) (time.Duration, bool) {
	e.mu.Lock()
	nb, refused, cred := e.notBefore, e.refusedWith, e.cred
	e.mu.Unlock()
	if !now.Before(nb) {
		return 0, false
	}
	if refused != "" && secretFingerprint(cred) != refused {
		return 0, false
	}
	return nb.Sub(now), true
}

// login runs one login for e through its singleflight: whoever asks, at
// most one login per credential is in flight. staleVersion is the snapshot
// version the caller found wanting: if the snapshot has moved on (someone
// else logged in meanwhile) and is valid, no new login is made. Unless
// force is set, no login is made while the failure backoff lasts.
func (p *Pool) login(ctx context.Context, e *entry, staleVersion uint64, why string, force bool) (*Snapshot, error) {
	s, err := p.flight(ctx, e, staleVersion, why, force)
	if err != nil || s.Valid(p.clk.Now(), p.margin(s)) {
		return s, err
	}
	// A caller that joined a flight as it ended gets that flight's session,
	// which the clock may have overtaken since (a suspended host, a late
	// timer): never hand it out; one more flight, from this session on.
	if s, err = p.flight(ctx, e, s.Version, why, force); err != nil || s.Valid(p.clk.Now(), p.margin(s)) {
		return s, err
	}
	return nil, &UnavailableError{Name: e.name, Reason: s.LastError, RetryAfter: time.Second}
}

// flight joins or starts e's login flight and waits for its outcome (at
// most WaitLimit or the caller's deadline).
func (p *Pool) flight(ctx context.Context, e *entry, staleVersion uint64, why string, force bool) (*Snapshot, error) {
	ch := e.sf.DoChan("login", func() (any, error) {
		if !p.work.start() {
			return nil, &UnavailableError{Name: e.name, Reason: errShuttingDown}
		}
		defer p.work.done()
		cur := e.snap.Load()
		now := p.clk.Now()
		if cur.Version != staleVersion && cur.Valid(now, p.margin(cur)) {
			return cur, nil
		}
		// Checked again here, where logins are serialised: a caller that
		// looked before the last login failed must not start another.
		if wait, blocked := p.blocked(e, now); blocked && !force {
			return nil, &UnavailableError{Name: e.name, Reason: cur.LastError, RetryAfter: wait}
		}
		if why == whyInvalidated && cur.Valid(now, p.margin(cur)) {
			// A caller reports the key of a session that is still valid:
			// a forced login, bounded.
			if snap, err, decided := p.boundForced(e, cur, now); decided {
				return snap, err
			}
		}
		// However short the sessions Erply grants, no more than one login
		// per third of a session's lifetime on demand or schedule.
		if wait, soon := p.tooSoon(e, now); soon && !force && why != whyInvalidated {
			e.timer.Set(refresher.Refresh, now.Add(wait))
			return nil, &UnavailableError{Name: e.name, Reason: errTooShort, RetryAfter: wait}
		}
		return p.doLogin(e, why, cur)
	})
	wait := p.opts.WaitLimit
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
		wait = time.Until(dl)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Snapshot), nil
	case <-ctx.Done():
		return nil, &UnavailableError{Name: e.name, Reason: ctx.Err(), RetryAfter: time.Second}
	case <-t.C:
		return nil, &UnavailableError{Name: e.name, Reason: context.DeadlineExceeded, RetryAfter: time.Second}
	}
}

// Bounds of logins that callers force by reporting the current key while
// its session is valid (Invalidate): ForcedBurst at once, then one per
// ForcedEvery, as cloud-sql-proxy bounds its forced refreshes. Past them a
// reported key is checked with Erply before any login.
const (
	ForcedBurst = 2
	ForcedEvery = 30 * time.Second
	// checkedFor is how long Erply's answer about a reported key answers
	// further reports of it without asking again.
	checkedFor = 5 * time.Second
)

// boundError is the reason callers get 503 when a reported key was issued
// moments ago and Erply does not confirm it alive, past the forced-login
// bound. Its session is kept: dropping it would make every caller log in.
type boundError struct{ cause error }

func (e *boundError) Error() string {
	if errors.Is(e.cause, upstream.ErrSessionInvalid) {
		return "Erply refuses a session key it issued less than 30 s ago: not logging in once per report (see Retry-After)"
	}
	return "the reported key could not be checked (" + e.cause.Error() + ") and its session is less than 30 s old: not logging in once per report (see Retry-After)"
}

func (e *boundError) Unwrap() error { return e.cause }

// forcedBucket is a token bucket of forced logins; the zero value is full.
type forcedBucket struct {
	spent float64   // tokens used, less what has refilled by at
	at    time.Time // when spent was last brought up to date
}

// take uses a token if one is left at now.
func (b *forcedBucket) take(now time.Time) bool {
	if !b.at.IsZero() {
		b.spent = max(0, b.spent-float64(now.Sub(b.at))/float64(ForcedEvery))
	}
	b.at = now
	if b.spent > ForcedBurst-1 {
		return false
	}
	b.spent++
	return true
}

// boundForced decides a forced login of e, whose current session cur is
// valid, inside its login flight (so all callers reporting one key count
// once). decided=false means log in; otherwise snap or err is the answer.
func (p *Pool) boundForced(e *entry, cur *Snapshot, now time.Time) (snap *Snapshot, err error, decided bool) {
	key := cur.Session.SessionKey
	e.mu.Lock()
	if e.forced.take(now) {
		e.mu.Unlock()
		return nil, nil, false
	}
	cached := e.checkedKey == key && now.Sub(e.checkedAt) < checkedFor
	cerr := e.checkedErr
	age := now.Sub(e.installedAt)
	e.mu.Unlock()
	log := p.log.With().Str("credential", e.name).Str("key", Fingerprint(key)).Logger()
	if !cached {
		ctx, cancel := context.WithTimeout(e.ctx, p.opts.LoginTimeout)
		defer cancel()
		acct := upstream.Account{ClientCode: cur.ClientCode, APIURL: cur.APIURL}
		_, cerr = p.opts.Upstream.GetSessionKeyInfo(ctx, acct, key)
		e.mu.Lock()
		e.checkedKey, e.checkedAt, e.checkedErr = key, now, cerr
		e.mu.Unlock()
		if cerr == nil {
			log.Info().Msg("a caller reported the current key as dead, but Erply still accepts it: no login")
		}
	}
	if cerr == nil {
		return cur, nil, true
	}
	if age >= ForcedEvery {
		return nil, nil, false // dead (or not confirmed alive), and not fresh: log in as usual
	}
	wait := ForcedEvery - age
	if !cached {
		log.Warn().Err(cerr).Stringer("sessionAge", age).Stringer("retryIn", wait).
			Msg("a caller reported a key issued moments ago as dead, past the bound on forced logins: not logging in yet")
	}
	return nil, &UnavailableError{Name: e.name, Reason: &boundError{cerr}, RetryAfter: wait}, true
}

// doLogin asks the credential's Method for a session to replace the one in
// replacing and installs it, or records the failure. It runs inside the
// entry's singleflight.
func (p *Pool) doLogin(e *entry, why string, replacing *Snapshot) (*Snapshot, error) {
	before := e.snap.Load()
	if before.Valid(p.clk.Now(), p.margin(before)) {
		p.publish(e, func(s *Snapshot) { s.State = StateRefreshing })
	}
	ctx, cancel := context.WithTimeout(e.ctx, p.opts.LoginTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, replacingKey{}, replacing)
	for {
		e.mu.Lock()
		cred, method, gen := e.cred, e.method, e.gen
		e.mu.Unlock()
		start := p.clk.Now()
		var (
			g   Grant
			err error
		)
		if method == nil {
			err = fmt.Errorf("credential %s: no login method for kind %q", e.name, cred.Kind)
		} else {
			g, err = method.Login(ctx, cred, p)
		}
		e.mu.Lock()
		changed := e.gen != gen
		e.mu.Unlock()
		if changed && ctx.Err() == nil {
			// A reload changed the credential while it logged in: that
			// session (or failure) belongs to the old settings.
			p.log.Info().Str("credential", e.name).Msg("configuration changed during the login: logging in again with the new one")
			continue
		}
		if err == nil {
			// A Method that knows when its session was measured (one
			// adopted from a fleet) says so; a login is measured from here.
			if g.Obtained.IsZero() {
				g.Obtained, g.ExpiresAt = start, time.Time{}
			}
			var clamped int64
			if clamped, err = p.complete(&g); err != nil {
				err = &upstream.Error{Request: "login", Err: err}
			} else if clamped != 0 && !e.warnedLength.Swap(true) {
				p.log.Warn().Str("credential", e.name).Int64("replied", clamped).Int64("trusted", g.Session.SessionLength).
					Msg("Erply's reply claims a longer session than was asked for or than Erply grants: trusting only the shorter")
			}
		}
		if err != nil {
			return nil, p.failed(e, err, why)
		}
		if g.Origin != "" {
			why = g.Origin
		}
		return p.install(e, g, why), nil
	}
}

// failed records a failed login and arms the retry.
func (p *Pool) failed(e *entry, err error, why string) error {
	e.mu.Lock()
	cred := e.cred
	e.mu.Unlock()
	log := p.log.With().Str("credential", e.name).Str("kind", string(cred.Kind)).Str("trigger", why).Logger()
	if e.ctx.Err() != nil {
		// Shutting down or removed: the login was cancelled, not refused.
		log.Debug().Err(err).Msg("login cancelled")
		reason := errShuttingDown
		if p.ctx.Err() == nil {
			reason = errRemoved
		}
		return &UnavailableError{Name: e.name, Reason: reason}
	}
	now := p.clk.Now()
	refused := false
	e.mu.Lock()
	e.failures++
	n := e.failures
	wait := p.policy.Backoff(err, n, now)
	e.notBefore = now.Add(wait)
	if k := refresher.Classify(err); k == refresher.Refused || k == refresher.Permanent {
		e.refusedWith = secretFingerprint(cred)
		refused = true
	} else {
		e.refusedWith = ""
	}
	e.mu.Unlock()
	p.logins.WithLabelValues(e.name, upstream.Result(err)).Inc()
	p.failures.WithLabelValues(e.name).Inc()

	cur := e.snap.Load()
	state := StateExpired
	if cur.Valid(now, p.margin(cur)) {
		state = StateFailing
	}
	retryAt := refresher.RetryAt(now, wait, refused)
	p.publish(e, func(s *Snapshot) { s.State, s.LastError, s.RefreshAt = state, err, retryAt })
	ev := log.Warn()
	if state == StateExpired {
		ev = log.Error()
	}
	ev.Err(err).Int("attempt", n).Stringer("retryIn", wait).Str("state", string(state)).Msg("login failed")
	e.timer.Set(refresher.Refresh, retryAt)
	return &UnavailableError{Name: e.name, Reason: err, RetryAfter: wait}
}

// Refresh is the refresh timer's event (refresher.Target): a scheduled
// login, or the retry after a failure. A late timer is harmless: Get
// checks expiry itself.
func (e *entry) Refresh() {
	p := e.p
	if e.ctx.Err() != nil {
		return
	}
	s := e.snap.Load()
	now := p.clk.Now()
	if s.Valid(now, p.margin(s)) && now.Before(s.RefreshAt) {
		// A session installed (adopted, restored) while this timer was
		// already firing moved the refresh point and re-armed the timer:
		// this delivery is stale.
		return
	}
	e.mu.Lock()
	nb, cred := e.notBefore, e.cred
	e.mu.Unlock()
	if p.refusedUnchanged(e, now) {
		// Still refused with the same secret: look again later.
		next := now.Add(refresher.SecretPoll)
		if nb.Before(next) {
			next = nb
		}
		e.timer.Set(refresher.Refresh, next)
		return
	}
	// A credential made on its parent's session is refreshed by the
	// parent's refresh when that comes first.
	if s.Session != nil && cred.Parent != "" {
		if parent := p.entry(cred.Parent); parent != nil {
			parent.mu.Lock()
			failing := parent.failures > 0
			parent.mu.Unlock()
			if at, ok := refresher.FollowParent(now, s.ExpiresAt, p.margin(s), parent.timer.Due(refresher.Refresh), failing); ok {
				e.timer.Set(refresher.Refresh, at)
				return
			}
		}
	}
	_, _ = p.login(e.ctx, e, s.Version, whyScheduled, false)
}

// loginInBackground starts a forced login (a parent's new session, a
// reload, a changed secret) without waiting for it.
func (p *Pool) loginInBackground(e *entry, why string) {
	if !p.work.start() {
		return
	}
	// The version is read now: if a caller's own login lands before this
	// goroutine runs, the flight sees the change and does not log in again.
	version := e.snap.Load().Version
	e.pending.Add(1)
	p.bg.add(1)
	go func() {
		defer p.work.done()
		defer p.bg.add(-1)
		defer e.pending.Add(-1)
		_, _ = p.login(e.ctx, e, version, why, true)
	}()
}

// dropIfDead is called when a caller reported staleKey, the current key, and
// the login that should have replaced it failed. It asks Erply about the key
// (once, however many callers wait on that login) and, if Erply says it is
// expired or unknown (as after a password change), stops serving it: the
// credential becomes expired and callers get 503 with the login's error
// instead of a key that cannot work. Any other answer keeps the key: a
// report alone does not kill a key Erply may still accept.
func (p *Pool) dropIfDead(ctx context.Context, e *entry, staleKey string) {
	s := e.snap.Load()
	if s.Session == nil || s.Session.SessionKey != staleKey || !s.Valid(p.clk.Now(), p.margin(s)) {
		return
	}
	ch := e.sf.DoChan("verify", func() (any, error) {
		if !p.work.start() {
			return nil, nil
		}
		defer p.work.done()
		// Like a login, the check outlives a caller who gives up; Close ends it.
		vctx, cancel := context.WithTimeout(e.ctx, p.opts.LoginTimeout)
		defer cancel()
		acct := upstream.Account{ClientCode: s.ClientCode, APIURL: s.APIURL}
		_, err := p.opts.Upstream.GetSessionKeyInfo(vctx, acct, staleKey)
		if cur := e.snap.Load(); !errors.Is(err, upstream.ErrSessionInvalid) || cur.Session == nil || cur.Session.SessionKey != staleKey {
			return nil, nil
		}
		now := p.clk.Now()
		dropped := false
		p.publish(e, func(n *Snapshot) {
			if n.Session != nil && n.Session.SessionKey == staleKey {
				n.ExpiresAt, n.State, dropped = now, StateExpired, true
			}
		})
		if dropped {
			p.log.Warn().Str("credential", e.name).Str("key", Fingerprint(staleKey)).
				Msg("Erply confirms the reported key is gone and no new one could be had: not serving it")
		}
		return nil, nil
	})
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

type replacingKey struct{}

// Replacing returns, inside Method.Login, the snapshot whose session the
// login is to replace, as the pool found it when it decided to log in (its
// Session is nil before the first login). A Method that can get a session
// from elsewhere (a fleet) compares it with the current snapshot: a
// different valid session installed since then makes the login needless.
func Replacing(ctx context.Context) (*Snapshot, bool) {
	s, ok := ctx.Value(replacingKey{}).(*Snapshot)
	return s, ok && s != nil
}
