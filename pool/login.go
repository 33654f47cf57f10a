package pool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// authenticate runs the upstream calls of one login for cred and returns the
// session and its expiry on the local clock. Lifetimes are Erply's
// (sessionLength, or expireUnixTime − requestUnixTime) applied to start, the
// local time the login began: the session cannot have been created earlier,
// so the local expiry is never later than Erply's.
func (p *Pool) authenticate(ctx context.Context, e *entry, cred config.Credential, start time.Time) (*upstream.Session, time.Time, error) {
	up := p.opts.Upstream
	acct := account(cred)
	var (
		sess *upstream.Session
		err  error
	)
	switch cred.Kind {
	case config.KindPIN:
		sess, err = p.switchUser(ctx, e, cred)
	case config.KindIdentity:
		var tok string
		if tok, err = cred.Token.Read(); err != nil {
			return nil, time.Time{}, err
		}
		sess, err = up.VerifyIdentityToken(ctx, acct, tok)
		if err == nil {
			// The reply carries only the key: fetch who it is.
			var full *upstream.Session
			if full, err = up.GetSessionKeyUser(ctx, acct, sess.SessionKey); err == nil {
				full.SessionKey, full.Request, full.SessionLength = sess.SessionKey, sess.Request, sess.SessionLength
				sess = full
			}
		}
	case config.KindOAuth:
		var tok string
		if tok, err = cred.Token.Read(); err != nil {
			return nil, time.Time{}, err
		}
		sess, err = up.VerifyOAuthToken(ctx, acct, tok, cred.SessionLength)
	default:
		var pw string
		if pw, err = cred.Password.Read(); err != nil {
			return nil, time.Time{}, err
		}
		sess, err = up.VerifyUser(ctx, acct, cred.Username, pw, cred.SessionLength)
	}
	if err != nil {
		return nil, time.Time{}, err
	}
	if sess == nil || sess.SessionKey == "" {
		return nil, time.Time{}, &upstream.Error{Request: requestOf(cred), Err: fmt.Errorf("%w: no session key", upstream.ErrBadReply)}
	}
	lifetime := time.Duration(sess.SessionLength) * time.Second
	if lifetime <= 0 {
		info, err := up.GetSessionKeyInfo(ctx, acct, sess.SessionKey)
		if err != nil {
			return nil, time.Time{}, err
		}
		lifetime = info.Remaining()
		sess.SessionLength = int64(lifetime / time.Second)
	}
	if lifetime <= 0 {
		return nil, time.Time{}, &upstream.Error{Request: requestOf(cred), Err: fmt.Errorf("%w: session has no lifetime", upstream.ErrBadReply)}
	}
	return sess, start.Add(lifetime), nil
}

func requestOf(c config.Credential) string {
	switch c.Kind {
	case config.KindPIN:
		return "switchUser"
	case config.KindIdentity:
		return "verifyIdentityToken"
	case config.KindOAuth:
		return "verifyOAuthToken"
	}
	return "verifyUser"
}

// switchUser logs a pin credential in on top of its parent's current session.
// If Erply says the parent's key is dead (deleted upstream, e.g. after a
// password change), the parent is invalidated — one re-login — and the switch
// is tried once more with the new key.
func (p *Pool) switchUser(ctx context.Context, e *entry, cred config.Credential) (*upstream.Session, error) {
	pin, err := cred.PIN.Read()
	if err != nil {
		return nil, err
	}
	parent, err := p.Get(ctx, cred.Parent)
	if err != nil {
		return nil, fmt.Errorf("parent %s: %w", cred.Parent, err)
	}
	acct := upstream.Account{ClientCode: parent.ClientCode, APIURL: cred.APIURL}
	if acct.APIURL == "" {
		acct.APIURL = parent.APIURL
	}
	sess, err := p.opts.Upstream.SwitchUser(ctx, acct, parent.Session.SessionKey, pin, cred.SessionLength)
	if errors.Is(err, upstream.ErrSessionInvalid) || errors.Is(err, upstream.ErrSessionTooOld) {
		parent, err = p.Invalidate(ctx, cred.Parent, parent.Session.SessionKey)
		if err != nil {
			return nil, fmt.Errorf("parent %s: %w", cred.Parent, err)
		}
		sess, err = p.opts.Upstream.SwitchUser(ctx, acct, parent.Session.SessionKey, pin, cred.SessionLength)
	}
	if err == nil {
		e.mu.Lock()
		e.parentKey = parent.Session.SessionKey
		e.mu.Unlock()
	}
	return sess, err
}

// scheduleJWT arms renewal of the session's JWTs that would expire before
// the session does: getJwtToken / getIdentityToken, not a new login.
func (p *Pool) scheduleJWT(e *entry, s *Snapshot) {
	if s.Session == nil {
		return
	}
	now := p.clk.Now()
	var due time.Time
	for _, tok := range []string{s.Session.Token, s.Session.IdentityToken} {
		exp := upstream.TokenExpiry(tok)
		if tok == "" || exp.IsZero() || !exp.Before(s.ExpiresAt) {
			continue
		}
		at := p.policy.RefreshAt(now, exp)
		if due.IsZero() || at.Before(due) {
			due = at
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.jwtTimer != nil {
		e.jwtTimer.Stop()
		e.jwtTimer = nil
	}
	if due.IsZero() || p.closed.Load() {
		return
	}
	version := s.Version
	e.jwtTimer = p.clk.AfterFunc(due.Sub(now), func() { p.renewJWT(e, version, 1) })
}

// renewJWT fetches fresh JWTs for the session of snapshot version (if it is
// still current) and publishes them.
func (p *Pool) renewJWT(e *entry, version uint64, attempt int) {
	if !p.track() {
		return
	}
	defer p.wg.Done()
	s := e.snap.Load()
	if s.Session == nil || s.Version != version {
		return // the session changed: its login scheduled its own renewal
	}
	ctx, cancel := context.WithTimeout(p.ctx, p.opts.LoginTimeout)
	defer cancel()
	acct := upstream.Account{ClientCode: s.ClientCode, APIURL: s.APIURL}
	sess := *s.Session
	var err error
	if sess.Token != "" {
		var j *upstream.JWT
		if j, err = p.opts.Upstream.GetJwtToken(ctx, acct, sess.SessionKey); err == nil {
			sess.Token = j.Token
		}
	}
	if err == nil && sess.IdentityToken != "" {
		var j *upstream.JWT
		if j, err = p.opts.Upstream.GetIdentityToken(ctx, acct, sess.SessionKey); err == nil {
			sess.IdentityToken = j.Token
		}
	}
	log := p.log.With().Str("credential", e.name).Logger()
	if err != nil {
		wait := p.policy.Backoff(err, attempt, p.clk.Now())
		log.Warn().Err(err).Stringer("retryIn", wait).Msg("JWT renewal failed")
		if errors.Is(err, upstream.ErrSessionInvalid) {
			// The session itself is gone: a login replaces it (and its JWTs).
			p.loginInBackground(e, "JWT renewal found the session gone")
			return
		}
		e.mu.Lock()
		if !p.closed.Load() {
			e.jwtTimer = p.clk.AfterFunc(wait, func() { p.renewJWT(e, version, attempt+1) })
		}
		e.mu.Unlock()
		return
	}
	var published *Snapshot
	e.mu.Lock()
	still := e.snap.Load().Version == version
	e.mu.Unlock()
	if !still {
		return
	}
	published = p.publish(e, func(s *Snapshot) { s.Session = &sess })
	log.Info().Str("key", Fingerprint(sess.SessionKey)).Msg("JWTs renewed")
	p.scheduleJWT(e, published)
}

// Update applies a reloaded configuration: added credentials log in, removed
// ones are dropped (a final snapshot with Removed is published), changed ones
// log in anew while their old session is still served, unchanged ones keep
// their sessions without a login. It returns without waiting for the logins.
func (p *Pool) Update(creds []config.Credential) {
	want := map[string]config.Credential{}
	for _, c := range creds {
		want[c.Name] = c
	}
	var relogin []*entry
	p.mu.Lock()
	var removed []*entry
	for _, n := range p.order {
		if _, ok := want[n]; !ok {
			removed = append(removed, p.entries[n])
			delete(p.entries, n)
		}
	}
	p.order = p.order[:0]
	for _, c := range creds {
		p.order = append(p.order, c.Name)
	}
	p.mu.Unlock()

	for _, c := range creds {
		e := p.entry(c.Name)
		if e == nil {
			// Re-added by name below; addEntry appends to order again, so undo that.
			e = p.newEntry(c)
			relogin = append(relogin, e)
			continue
		}
		e.mu.Lock()
		same := e.cred.Equal(c)
		e.cred = c
		e.mu.Unlock()
		if !same {
			p.publish(e, func(s *Snapshot) { s.AllowUIDs, s.AllowGIDs, s.Kind = c.AllowUIDs, c.AllowGIDs, string(c.Kind) })
			relogin = append(relogin, e)
		}
	}
	for _, e := range removed {
		e.stopTimers()
		p.publish(e, func(s *Snapshot) { s.Removed = true })
		p.log.Info().Str("credential", e.name).Msg("credential removed by reload")
	}
	for _, e := range relogin {
		p.loginInBackground(e, "reload")
	}
}

// newEntry adds an entry for c without touching the order (Update set it).
func (p *Pool) newEntry(c config.Credential) *entry {
	e := p.addEntry(c)
	p.mu.Lock()
	p.order = p.order[:len(p.order)-1]
	p.mu.Unlock()
	return e
}

func (p *Pool) loginInBackground(e *entry, why string) {
	if !p.track() {
		return
	}
	// The version is read now: if a caller's own login lands before this
	// goroutine runs, the flight sees the change and does not log in again.
	version := e.snap.Load().Version
	e.pending.Add(1)
	p.bg.Add(1)
	go func() {
		defer p.wg.Done()
		defer p.bg.Done()
		defer e.pending.Add(-1)
		_, _ = p.login(p.ctx, e, version, why, true)
	}()
}

// SecretsChanged is called after the secret files may have changed (SIGHUP):
// a credential waiting out a refused login whose secret is now different
// tries again at once. Others pick the new secret up at their next login.
func (p *Pool) SecretsChanged() {
	p.mu.RLock()
	var retry []*entry
	for _, n := range p.order {
		e := p.entries[n]
		e.mu.Lock()
		if e.refusedWith != "" && secretFingerprint(e.cred) != e.refusedWith {
			retry = append(retry, e)
		}
		e.mu.Unlock()
	}
	p.mu.RUnlock()
	for _, e := range retry {
		e.mu.Lock()
		e.notBefore = time.Time{}
		e.mu.Unlock()
		p.loginInBackground(e, "secret changed")
	}
}
