package state

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Checker asks Erply whether a session key is alive and how long it has
// left on Erply's clock. *upstream.Client implements it.
type Checker interface {
	GetSessionKeyInfo(ctx context.Context, acct upstream.Account, sessionKey string) (*upstream.SessionKeyInfo, error)
}

var _ Checker = (*upstream.Client)(nil)

// Result is what became of one credential's saved session at start.
type Result string

// The results of a restore.
const (
	// Restored: Erply confirmed the saved session; it is served with no login.
	Restored Result = "restored"
	// Unverified: Erply could not be asked (network, 5xx, 1000, 1002, 429);
	// the saved session is served until its saved expiry less the margin
	// and checked again with the usual backoff.
	Unverified Result = "unverified"
	// Dead: Erply says the saved session expired or was deleted
	// (1054/1055); the credential logs in as usual.
	Dead Result = "dead"
	// Skipped: the saved session was not used (Outcome.Reason says why);
	// the credential logs in as usual.
	Skipped Result = "skipped"
)

// Why a credential's saved session was skipped: Outcome.Reason, and the
// reason label of erply_sessiond_sessions_restore_skipped_total.
const (
	ReasonMissing     = "missing"             // nothing saved for it (or the file is unusable)
	ReasonIdentity    = "identity_changed"    // saved for another kind, client code, user, parent, token file or API URL
	ReasonExpiring    = "expiring"            // no more than the safety margin left: not checked
	ReasonParent      = "parent_not_restored" // a pin whose parent's session was not restored
	ReasonCheckFailed = "check_failed"        // Erply answered the check with an error other than 1054/1055 or unreachable
	ReasonClock       = "clock"               // Erply unreachable and the local clock went back since the save: the saved expiry cannot be trusted
	ReasonInUse       = "has_session"         // the pool already held a session (a login raced the restore)
	ReasonCancelled   = "cancelled"           // the daemon stopped during the restore
)

var skipReasons = []string{ReasonMissing, ReasonIdentity, ReasonExpiring, ReasonParent,
	ReasonCheckFailed, ReasonClock, ReasonInUse, ReasonCancelled}

// The check label values of erply_sessiond_sessions_restored_total.
const (
	checkValid       = "valid"
	checkUnreachable = "unreachable"
)

// Outcome is one credential's restore. It carries no secret.
type Outcome struct {
	Credential string
	Result     Result
	// Reason is one of the Reason constants when Result is Skipped.
	Reason string
	// Detail says more, for the log.
	Detail string
	// Key is the saved key's fingerprint (pool.Fingerprint), "" when none.
	Key string
}

// Report is what Restore did, for logs, metrics and tests. Restore has
// already logged it.
type Report struct {
	// Outcomes holds one Outcome per configured credential, parents first.
	Outcomes []Outcome
	// Findings are problems with the state file or its entries (corrupt,
	// unknown version, another identity's entry, …): each was logged as a
	// warning and costs only an ordinary login.
	Findings []string
}

// Count returns how many credentials ended with res.
func (r Report) Count(res Result) int {
	n := 0
	for _, o := range r.Outcomes {
		if o.Result == res {
			n++
		}
	}
	return n
}

// Outcome returns the outcome of the named credential.
func (r Report) Outcome(name string) (Outcome, bool) {
	for _, o := range r.Outcomes {
		if o.Credential == name {
			return o, true
		}
	}
	return Outcome{}, false
}

// Restore brings the saved sessions back into p. Call it once, after
// pool.New and before pool.Open (the first login round), then Follow.
// Parents are restored before the pins made on them, a pin only on top of
// its restored parent. A saved session whose identity fingerprint matches
// and that has more than the safety margin left is checked with one
// getSessionKeyInfo: valid → installed with its expiry re-anchored on
// Erply's clock (pool.Install, origin "restored"), so Open makes no login
// for it; 1054/1055 → left to the ordinary login; Erply unreachable →
// installed with its saved expiry, served until that less the margin, and
// checked again with the policy's backoff until the pool's own refresh
// window opens (then the pool's refresh and its retries take over). Every
// other case is a logged finding or skip and an ordinary login, never an
// error. creds are the configured credentials (they become the Store's, as
// by SetCredentials); policy is the pool's.
func (s *Store) Restore(ctx context.Context, p *pool.Pool, up Checker, creds []config.Credential, policy refresher.Policy) Report {
	s.SetCredentials(creds)
	s.mu.Lock()
	infos := s.creds
	s.mu.Unlock()
	rep := Report{Findings: append([]string(nil), s.findings...)}

	configured := map[string]bool{}
	for _, c := range creds {
		configured[c.Name] = true
	}
	var gone []string
	for name := range s.loaded {
		if !configured[name] {
			gone = append(gone, name)
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		rep.Findings = append(rep.Findings, fmt.Sprintf("saved session of %q: no such credential is configured now: dropped", truncate(name)))
	}

	var mu sync.Mutex
	parentKeys := map[string]string{} // restored credential → its key, for the pins on it
	for _, level := range byDepth(creds) {
		outs := make([]Outcome, len(level))
		g := new(errgroup.Group)
		g.SetLimit(s.opts.Concurrency)
		for i, c := range level {
			mu.Lock()
			pk, parentOK := parentKeys[c.Parent]
			mu.Unlock()
			g.Go(func() error {
				o := s.restoreOne(ctx, p, up, c, infos[c.Name].fingerprint, c.Parent == "" || parentOK, pk, policy)
				if o.Result == Restored || o.Result == Unverified {
					mu.Lock()
					parentKeys[c.Name] = s.loaded[c.Name].Session.SessionKey
					mu.Unlock()
				}
				outs[i] = o
				return nil
			})
		}
		_ = g.Wait()
		rep.Outcomes = append(rep.Outcomes, outs...)
	}
	// A stale entry (another identity's, or one that ran out while the
	// daemon was down) is worth a warning, not only an info line.
	for _, o := range rep.Outcomes {
		if o.Result == Skipped && (o.Reason == ReasonIdentity || o.Reason == ReasonExpiring) {
			rep.Findings = append(rep.Findings, fmt.Sprintf("saved session of %s not used: %s", o.Credential, o.Detail))
		}
	}
	s.report(rep)
	return rep
}

// byDepth groups credentials by how many parents they stand on, in
// configuration order within a group: parents before their pins.
func byDepth(creds []config.Credential) [][]config.Credential {
	byName := make(map[string]config.Credential, len(creds))
	for _, c := range creds {
		byName[c.Name] = c
	}
	depth := func(c config.Credential) int {
		d := 0
		for c.Parent != "" && d <= len(creds) {
			p, ok := byName[c.Parent]
			if !ok {
				break
			}
			c, d = p, d+1
		}
		return d
	}
	var levels [][]config.Credential
	for _, c := range creds {
		d := depth(c)
		for len(levels) <= d {
			levels = append(levels, nil)
		}
		levels[d] = append(levels[d], c)
	}
	return levels
}

// restoreOne restores one credential. parentOK says whether its parent (if
// it has one) was restored, parentKey is that parent's key.
func (s *Store) restoreOne(ctx context.Context, p *pool.Pool, up Checker, c config.Credential, fp string, parentOK bool, parentKey string, policy refresher.Policy) Outcome {
	o := Outcome{Credential: c.Name}
	skip := func(reason, detail string) Outcome {
		o.Result, o.Reason, o.Detail = Skipped, reason, detail
		return o
	}
	rec := s.loaded[c.Name]
	if rec == nil {
		return skip(ReasonMissing, "no saved session")
	}
	key := rec.Session.SessionKey
	o.Key = pool.Fingerprint(key)
	if rec.Fingerprint != fp {
		return skip(ReasonIdentity, "saved for a different identity (kind, client code, username, parent, token file or API URL changed)")
	}
	if !parentOK {
		return skip(ReasonParent, "its parent "+c.Parent+" was not restored: it switches anew on the parent's new session")
	}
	if s.hasSession(p, c.Name) {
		return skip(ReasonInUse, "the credential already holds a session")
	}
	lifetime := time.Duration(rec.Session.SessionLength) * time.Second
	margin := policy.MarginFor(lifetime)
	now := s.clk.Now()
	if left := rec.ExpiresAt.Sub(now); left <= margin {
		return skip(ReasonExpiring, fmt.Sprintf("%s left by the saved expiry, margin %s: not checked", max(left, 0).Round(time.Second), margin))
	}
	if ctx.Err() != nil {
		return skip(ReasonCancelled, "stopping")
	}
	acct := upstream.Account{ClientCode: c.ClientCode, APIURL: c.APIURL}
	cctx, cancel := context.WithTimeout(ctx, s.opts.CheckTimeout)
	t0 := s.clk.Now()
	info, err := up.GetSessionKeyInfo(cctx, acct, key)
	cancel()
	switch {
	case err == nil:
		left := info.Remaining()
		if left <= margin {
			return skip(ReasonExpiring, fmt.Sprintf("Erply gives it %s, margin %s", left, margin))
		}
		expires := t0.Add(left)
		g := pool.Grant{Session: rec.upstreamSession(), Obtained: expires.Add(-lifetime), ExpiresAt: expires, ParentKey: parentKey}
		if g.Obtained.After(t0) {
			g.Obtained = t0
		}
		if s.hasSession(p, c.Name) {
			return skip(ReasonInUse, "a login finished during the check")
		}
		if _, err := p.Install(c.Name, g, "restored"); err != nil {
			return skip(installReason(err), err.Error())
		}
		o.Result, o.Detail = Restored, fmt.Sprintf("confirmed by Erply, %s left", left.Round(time.Second))
		return o
	case errors.Is(err, upstream.ErrSessionInvalid):
		o.Result, o.Detail = Dead, err.Error()
		return o
	case ctx.Err() != nil:
		return skip(ReasonCancelled, "stopping")
	case !unreachable(err):
		return skip(ReasonCheckFailed, err.Error())
	}
	// Erply cannot be asked: serve the saved session on the saved expiry,
	// which is on the local clock — unless that clock went back since.
	if now.Before(rec.MeasuredAt) {
		return skip(ReasonClock, fmt.Sprintf("Erply unreachable (%v) and the local clock is before the instant the session was measured", err))
	}
	expires := rec.ExpiresAt
	if latest := rec.MeasuredAt.Add(lifetime); expires.After(latest) {
		expires = latest
	}
	g := pool.Grant{Session: rec.upstreamSession(), Obtained: expires.Add(-lifetime), ExpiresAt: expires, ParentKey: parentKey}
	if s.hasSession(p, c.Name) {
		return skip(ReasonInUse, "a login finished during the check")
	}
	if _, ierr := p.Install(c.Name, g, "restored, Erply unreachable"); ierr != nil {
		return skip(installReason(ierr), ierr.Error())
	}
	o.Result, o.Detail = Unverified, fmt.Sprintf("Erply unreachable (%v): served until %s less the margin", err, expires.UTC().Format(time.RFC3339))
	s.scheduleRecheck(p, up, c, key, g, policy, 1, err)
	return o
}

// installReason is the skip reason of a session the pool refused: inside
// the safety margin (time passed during the check), or not installable.
func installReason(err error) string {
	if errors.Is(err, pool.ErrUnknownCredential) || errors.Is(err, upstream.ErrBadReply) {
		return ReasonCheckFailed
	}
	return ReasonExpiring
}

func (s *Store) hasSession(p *pool.Pool, name string) bool {
	snap, ok := p.Snapshot(name)
	return ok && snap.Session != nil
}

// unreachable reports whether err means Erply could not be asked (as
// opposed to an answer about the key).
func unreachable(err error) bool {
	return errors.Is(err, upstream.ErrUnavailable) || errors.Is(err, upstream.ErrMaintenance) ||
		errors.Is(err, upstream.ErrRateLimited) || errors.Is(err, upstream.ErrQuota) ||
		errors.Is(err, context.DeadlineExceeded)
}

// refreshWindow is the earliest instant the pool may refresh a session
// installed with g: from then on its refresh (and its retries) own the
// credential.
func refreshWindow(policy refresher.Policy, g pool.Grant) time.Time {
	policy.Float64 = func() float64 { return 0 } // the low end of the jitter
	return policy.RefreshAt(g.Obtained, g.ExpiresAt)
}

// scheduleRecheck arms the next check of a session installed while Erply
// was unreachable, after the policy's backoff for the attempt-th failure;
// none once the pool's refresh window has opened.
func (s *Store) scheduleRecheck(p *pool.Pool, up Checker, c config.Credential, key string, g pool.Grant, policy refresher.Policy, attempt int, lastErr error) {
	now := s.clk.Now()
	wait := policy.Backoff(lastErr, attempt, now)
	if !now.Add(wait).Before(refreshWindow(policy, g)) {
		s.log.Info().Str("credential", c.Name).Str("key", pool.Fingerprint(key)).
			Msg("restored session not confirmed yet: the pool's refresh takes over")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if t, ok := s.rechecks[c.Name]; ok && t.Stop() {
		s.wg.Done()
	}
	s.wg.Add(1)
	var timer clock.Timer // read by the callback under s.mu, so only once it is set
	timer = s.clk.AfterFunc(wait, func() {
		defer s.wg.Done()
		s.mu.Lock()
		if s.rechecks[c.Name] == timer {
			delete(s.rechecks, c.Name)
		}
		s.mu.Unlock()
		s.recheck(p, up, c, key, g, policy, attempt+1)
	})
	s.rechecks[c.Name] = timer
}

// recheck asks Erply again about a session installed while it was
// unreachable. attempt is this check's number.
func (s *Store) recheck(p *pool.Pool, up Checker, c config.Credential, key string, g pool.Grant, policy refresher.Policy, attempt int) {
	log := s.log.With().Str("credential", c.Name).Str("key", pool.Fingerprint(key)).Logger()
	current := func() (*pool.Snapshot, bool) {
		snap, ok := p.Snapshot(c.Name)
		return snap, ok && !snap.Removed && snap.Session != nil && snap.Session.SessionKey == key
	}
	if _, ok := current(); !ok || s.ctx.Err() != nil {
		return // the pool moved on (a login, a reload), or the daemon is stopping
	}
	lifetime := g.ExpiresAt.Sub(g.Obtained)
	margin := policy.MarginFor(lifetime)
	acct := upstream.Account{ClientCode: c.ClientCode, APIURL: c.APIURL}
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.CheckTimeout)
	defer cancel()
	t0 := s.clk.Now()
	info, err := up.GetSessionKeyInfo(ctx, acct, key)
	switch {
	case s.ctx.Err() != nil:
		return
	case err == nil && info.Remaining() > margin:
		expires := t0.Add(info.Remaining())
		log.Info().Stringer("left", info.Remaining().Round(time.Second)).Msg("restored session confirmed by Erply")
		snap, ok := current()
		if d := expires.Sub(snap.ExpiresAt); ok && (d >= time.Second || d <= -time.Second) {
			// Re-anchor the expiry on Erply's clock.
			ng := g
			ng.ExpiresAt = expires
			if ng.Obtained = expires.Add(-lifetime); ng.Obtained.After(t0) {
				ng.Obtained = t0
			}
			if _, err := p.Install(c.Name, ng, "restored, confirmed"); err != nil {
				log.Warn().Err(err).Msg("cannot re-anchor the restored session's expiry")
			}
		}
	case err == nil || errors.Is(err, upstream.ErrSessionInvalid):
		// Dead, or too little left to serve: one login replaces it
		// (compare-and-refresh: nothing if the pool already moved on).
		s.m.dead.Inc()
		log.Info().AnErr("check", err).Msg("restored session is gone at Erply: logging in")
		if _, err := p.Invalidate(s.ctx, c.Name, key); err != nil {
			log.Warn().Err(err).Msg("login after the restored session was found gone failed; the pool retries")
		}
	default:
		log.Debug().Err(err).Int("attempt", attempt).Msg("restored session still unconfirmed")
		s.scheduleRecheck(p, up, c, key, g, policy, attempt, err)
	}
}

// report logs a restore and counts it.
func (s *Store) report(rep Report) {
	for _, f := range rep.Findings {
		s.log.Warn().Str("file", s.path).Msg(f)
	}
	for _, o := range rep.Outcomes {
		ev := s.log.Info().Str("credential", o.Credential).Str("result", string(o.Result))
		if o.Key != "" {
			ev = ev.Str("key", o.Key)
		}
		if o.Reason != "" {
			ev = ev.Str("reason", o.Reason)
		}
		ev.Str("detail", o.Detail).Msg("restore")
		switch o.Result {
		case Restored:
			s.m.restored.WithLabelValues(checkValid).Inc()
		case Unverified:
			s.m.restored.WithLabelValues(checkUnreachable).Inc()
		case Dead:
			s.m.dead.Inc()
		case Skipped:
			s.m.skipped.WithLabelValues(o.Reason).Inc()
		}
	}
	s.log.Info().Int("restored", rep.Count(Restored)).Int("unverified", rep.Count(Unverified)).
		Int("dead", rep.Count(Dead)).Int("skipped", rep.Count(Skipped)).Msg("sessions restored from the state file")
}
