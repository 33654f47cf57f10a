package pool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Expire is the expiry timer's event (refresher.Target): the session has
// entered its safety margin without being replaced, so readiness, metrics
// and the listing show it expired even when nobody asks for the key.
func (e *entry) Expire() {
	p := e.p
	cur := e.snap.Load()
	if cur.Session == nil || cur.State == StateExpired || cur.Valid(p.clk.Now(), p.margin(cur)) {
		return
	}
	key := cur.Session.SessionKey
	expired := false
	p.publish(e, func(s *Snapshot) {
		if s.Session != nil && s.Session.SessionKey == key && s.State != StateExpired {
			s.State, expired = StateExpired, true
		}
	})
	if expired {
		p.log.Warn().Str("credential", e.name).Str("key", Fingerprint(key)).Msg("session expired without a replacement")
	}
}

// jwtRenewAt is when s's JWTs that would expire before the session are due
// for renewal (zero: none).
func (p *Pool) jwtRenewAt(s *Snapshot) (at time.Time) {
	if s.Session == nil {
		return at
	}
	return p.policy.JWTRenewAt(p.clk.Now(), s.ExpiresAt,
		upstream.TokenExpiry(s.Session.Token), upstream.TokenExpiry(s.Session.IdentityToken))
}

// RenewJWT is the JWT timer's event (refresher.Target): fetch fresh JWTs
// for the current session with getJwtToken / getIdentityToken (not a new
// login) and publish them.
func (e *entry) RenewJWT() {
	p := e.p
	if !p.work.start() {
		return
	}
	defer p.work.done()
	s := e.snap.Load()
	if s.Session == nil || s.Removed {
		return
	}
	if due := e.timer.Due(refresher.RenewJWT); !due.IsZero() && p.clk.Now().Before(due) {
		return // a stale delivery: a session installed meanwhile re-armed the renewal
	}
	if p.jwtRenewAt(s).IsZero() {
		return // no JWT of this session expires before it does
	}
	ctx, cancel := context.WithTimeout(e.ctx, p.opts.LoginTimeout)
	defer cancel()
	acct := upstream.Account{ClientCode: s.ClientCode, APIURL: s.APIURL}
	fetch := func(ctx context.Context) (*upstream.Session, error) {
		sess := *s.Session
		if sess.Token != "" {
			j, err := p.opts.Upstream.GetJwtToken(ctx, acct, sess.SessionKey)
			if err != nil {
				return nil, err
			}
			sess.Token = j.Token
		}
		if sess.IdentityToken != "" {
			j, err := p.opts.Upstream.GetIdentityToken(ctx, acct, sess.SessionKey)
			if err != nil {
				return nil, err
			}
			sess.IdentityToken = j.Token
		}
		return &sess, nil
	}
	var (
		renewedSess *upstream.Session
		err         error
	)
	if p.opts.Renewer != nil {
		renewedSess, err = p.opts.Renewer.RenewJWT(ctx, s, fetch)
	} else {
		renewedSess, err = fetch(ctx)
	}
	if err == nil && (renewedSess == nil || renewedSess.SessionKey != s.Session.SessionKey) {
		err = fmt.Errorf("%w: JWT renewal returned another session", upstream.ErrBadReply)
	}
	log := p.log.With().Str("credential", e.name).Logger()
	if err != nil {
		if e.ctx.Err() != nil {
			return
		}
		e.mu.Lock()
		e.jwtFailures++
		n := e.jwtFailures
		e.mu.Unlock()
		wait := p.policy.Backoff(err, n, p.clk.Now())
		log.Warn().Err(err).Stringer("retryIn", wait).Msg("JWT renewal failed")
		if errors.Is(err, upstream.ErrSessionInvalid) {
			// The session itself is gone: a login replaces it (and its JWTs).
			p.loginInBackground(e, whyJWTGone)
			return
		}
		e.timer.Set(refresher.RenewJWT, p.clk.Now().Add(wait))
		return
	}
	sess := *renewedSess
	if stale := notNewer(s.Session, &sess); stale != "" {
		// Renewing again would fetch the same JWT again, without end.
		log.Warn().Str("jwt", stale).Msg("Erply returned a JWT no newer than the one held: keeping the new one, no further renewal for this session")
		p.publish(e, func(n *Snapshot) {
			if n.Session != nil && n.Session.SessionKey == sess.SessionKey {
				n.Session = &sess
			}
		})
		return
	}
	renewed := false
	published := p.publish(e, func(n *Snapshot) {
		// Only onto the session the JWTs were fetched for.
		if n.Session != nil && n.Session.SessionKey == sess.SessionKey {
			n.Session, renewed = &sess, true
		}
	})
	if !renewed {
		return
	}
	e.mu.Lock()
	e.jwtFailures = 0
	e.mu.Unlock()
	log.Info().Str("key", Fingerprint(sess.SessionKey)).Msg("JWTs renewed")
	e.timer.Set(refresher.RenewJWT, p.jwtRenewAt(published))
}

// notNewer names a JWT of renewed whose expiry is not after the one it
// replaces in held ("" when every renewed JWT is newer).
func notNewer(held, renewed *upstream.Session) string {
	if held.Token != "" && !upstream.TokenExpiry(renewed.Token).After(upstream.TokenExpiry(held.Token)) {
		return "token"
	}
	if held.IdentityToken != "" && !upstream.TokenExpiry(renewed.IdentityToken).After(upstream.TokenExpiry(held.IdentityToken)) {
		return "identityToken"
	}
	return ""
}
