// Package pool holds every credential's current Erply session: one login per credential at a time, refreshed ahead of expiry, never handed out expired.
package pool

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Upstream is what the pool needs from Erply; *upstream.Client implements it.
type Upstream interface {
	VerifyUser(ctx context.Context, acct upstream.Account, username, password string, sessionLength int) (*upstream.Session, error)
	SwitchUser(ctx context.Context, acct upstream.Account, parentSessionKey, pin string, sessionLength int) (*upstream.Session, error)
	VerifyIdentityToken(ctx context.Context, acct upstream.Account, jwt string) (*upstream.Session, error)
	VerifyOAuthToken(ctx context.Context, acct upstream.Account, idToken string, expiresIn int) (*upstream.Session, error)
	GetSessionKeyInfo(ctx context.Context, acct upstream.Account, sessionKey string) (*upstream.SessionKeyInfo, error)
	GetSessionKeyUser(ctx context.Context, acct upstream.Account, sessionKey string) (*upstream.Session, error)
	GetJwtToken(ctx context.Context, acct upstream.Account, sessionKey string) (*upstream.JWT, error)
	GetIdentityToken(ctx context.Context, acct upstream.Account, sessionKey string) (*upstream.JWT, error)
}

// Options configures a Pool. Upstream and Credentials are required.
type Options struct {
	Upstream    Upstream
	Credentials []config.Credential
	Clock       clock.Clock // default clock.Real
	Policy      refresher.Policy
	Logger      zerolog.Logger
	Registerer  prometheus.Registerer // optional
	// LoginTimeout bounds one login (all its upstream calls); default 60s.
	LoginTimeout time.Duration
	// WaitLimit bounds how long a caller waits for a login in flight; default 30s.
	WaitLimit time.Duration
	// StartConcurrency bounds parallel logins at start; default 8.
	StartConcurrency int
}

// Pool holds the credentials and their sessions. Its methods are safe for
// concurrent use. Make one with New, start it with Open, stop it with Close.
type Pool struct {
	opts   Options
	clk    clock.Clock
	log    zerolog.Logger
	policy refresher.Policy

	ctx     context.Context // cancelled by Close; parent of every login
	cancel  context.CancelFunc
	wg      sync.WaitGroup // background work: timers' callbacks, logins
	closeMu sync.Mutex     // orders wg.Add against Close's wg.Wait
	closed  atomic.Bool
	bg      sync.WaitGroup // logins started in the background (followers, reload), a subset of wg

	mu      sync.RWMutex // guards entries and order
	entries map[string]*entry
	order   []string

	subMu sync.Mutex
	subs  map[int]func(*Snapshot)
	subID int

	logins   *prometheus.CounterVec
	failures *prometheus.CounterVec
}

// SecretPoll is how often a credential whose login was refused looks at its
// secret file for a change (then it tries again at once, not after the backoff).
const SecretPoll = 10 * time.Second

// entry is one credential.
type entry struct {
	name string
	snap atomic.Pointer[Snapshot]
	sf   singleflight.Group

	mu          sync.Mutex // guards the fields below
	cred        config.Credential
	timer       clock.Timer
	jwtTimer    clock.Timer
	expTimer    clock.Timer // marks the session expired when it enters the margin
	nextRefresh time.Time   // when the refresh timer fires
	failures    int         // consecutive failed logins
	notBefore   time.Time   // no on-demand login before this after a failure
	refusedWith string      // fingerprint of the secret a refused login used
	inflight    bool
	parentKey   string // pin credentials: the parent session key of the last switch

	pending atomic.Int32 // forced background logins asked for and not yet done
}

// New makes a Pool; nothing happens until Open.
func New(opts Options) (*Pool, error) {
	if opts.Upstream == nil {
		return nil, errors.New("pool: Upstream is required")
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.Policy.Fraction == 0 {
		opts.Policy = refresher.Default()
	}
	if opts.LoginTimeout <= 0 {
		opts.LoginTimeout = 60 * time.Second
	}
	if opts.WaitLimit <= 0 {
		opts.WaitLimit = 30 * time.Second
	}
	if opts.StartConcurrency <= 0 {
		opts.StartConcurrency = 8
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		opts:    opts,
		clk:     opts.Clock,
		log:     opts.Logger.With().Str("component", "pool").Logger(),
		policy:  opts.Policy,
		ctx:     ctx,
		cancel:  cancel,
		entries: map[string]*entry{},
		subs:    map[int]func(*Snapshot){},
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erply_sessiond_logins_total",
			Help: "Logins to Erply by credential and result (ok, or the failure class).",
		}, []string{"credential", "result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erply_sessiond_refresh_failures_total",
			Help: "Failed session refreshes by credential.",
		}, []string{"credential"}),
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{p.logins, p.failures} {
			if err := opts.Registerer.Register(c); err != nil {
				cancel()
				return nil, fmt.Errorf("pool: register metrics: %w", err)
			}
		}
	}
	for _, c := range opts.Credentials {
		p.addEntry(c)
	}
	return p, nil
}

func (p *Pool) addEntry(c config.Credential) *entry {
	e := &entry{name: c.Name, cred: c}
	e.snap.Store(&Snapshot{
		Name: c.Name, Kind: string(c.Kind), ClientCode: c.ClientCode,
		APIURL: account(c).URL(), State: StateStarting,
		AllowUIDs: c.AllowUIDs, AllowGIDs: c.AllowGIDs, Version: 1,
	})
	p.mu.Lock()
	p.entries[c.Name] = e
	p.order = append(p.order, c.Name)
	p.mu.Unlock()
	p.logins.WithLabelValues(c.Name, "ok")
	p.failures.WithLabelValues(c.Name)
	return e
}

func account(c config.Credential) upstream.Account {
	return upstream.Account{ClientCode: c.ClientCode, APIURL: c.APIURL}
}

// Open logs in every credential, in parallel (bounded), and returns when each
// holds a session or has a definite error: the daemon is then ready. Login
// failures are not returned (they are in each credential's state); Open
// fails only if ctx ends first.
func (p *Pool) Open(ctx context.Context) error {
	p.mu.RLock()
	names := append([]string(nil), p.order...)
	p.mu.RUnlock()
	return p.loginAll(ctx, names)
}

func (p *Pool) loginAll(ctx context.Context, names []string) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.opts.StartConcurrency)
	for _, n := range names {
		g.Go(func() error {
			_, err := p.Get(gctx, n)
			if ctxErr := gctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
				return err
			}
			return nil
		})
	}
	return g.Wait()
}

// Close stops every timer and waits for logins in flight to end (they are cancelled).
func (p *Pool) Close() error {
	p.closeMu.Lock()
	if !p.closed.CompareAndSwap(false, true) {
		p.closeMu.Unlock()
		return nil
	}
	p.closeMu.Unlock()
	p.cancel()
	p.mu.RLock()
	for _, e := range p.entries {
		e.stopTimers()
	}
	p.mu.RUnlock()
	p.wg.Wait()
	return nil
}

func (e *entry) stopTimers() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	if e.jwtTimer != nil {
		e.jwtTimer.Stop()
		e.jwtTimer = nil
	}
	if e.expTimer != nil {
		e.expTimer.Stop()
		e.expTimer = nil
	}
}

func (e *entry) refusedWithSet() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.refusedWith != ""
}

func (p *Pool) entry(name string) *entry {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.entries[name]
}

// track registers one unit of background work; false once closed.
func (p *Pool) track() bool {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed.Load() {
		return false
	}
	p.wg.Add(1)
	return true
}

// Names returns the configured credential names in configuration order.
func (p *Pool) Names() []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return append([]string(nil), p.order...)
}

// Snapshot returns a credential's current snapshot without refreshing it.
func (p *Pool) Snapshot(name string) (*Snapshot, bool) {
	e := p.entry(name)
	if e == nil {
		return nil, false
	}
	return e.snap.Load(), true
}

// Snapshots returns every credential's current snapshot, in configuration order.
func (p *Pool) Snapshots() []*Snapshot {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]*Snapshot, 0, len(p.order))
	for _, n := range p.order {
		out = append(out, p.entries[n].snap.Load())
	}
	return out
}

// Subscribe calls f with every new snapshot of any credential (including a
// final one with Removed set), synchronously from the goroutine that made the
// change: f must be quick. cancel stops the calls.
func (p *Pool) Subscribe(f func(*Snapshot)) (cancel func()) {
	p.subMu.Lock()
	defer p.subMu.Unlock()
	p.subID++
	id := p.subID
	p.subs[id] = f
	return func() {
		p.subMu.Lock()
		defer p.subMu.Unlock()
		delete(p.subs, id)
	}
}

// Margin returns the safety margin for a snapshot's session.
func (p *Pool) margin(s *Snapshot) time.Duration {
	if s == nil || s.Session == nil || s.Session.SessionLength <= 0 {
		return p.policy.MarginFor(time.Duration(1<<62 - 1))
	}
	return p.policy.MarginFor(time.Duration(s.Session.SessionLength) * time.Second)
}

// MarginOf is the safety margin that applies to s: a key with less than this
// left is never served.
func (p *Pool) MarginOf(s *Snapshot) time.Duration { return p.margin(s) }

// publish stores s as e's snapshot (with the next version) and tells subscribers.
func (p *Pool) publish(e *entry, mutate func(s *Snapshot)) *Snapshot {
	e.mu.Lock()
	old := e.snap.Load()
	s := *old
	mutate(&s)
	s.Version = old.Version + 1
	e.snap.Store(&s)
	e.mu.Unlock()
	p.subMu.Lock()
	subs := make([]func(*Snapshot), 0, len(p.subs))
	for _, f := range p.subs {
		subs = append(subs, f)
	}
	p.subMu.Unlock()
	for _, f := range subs {
		f(&s)
	}
	return &s
}

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
	// A forced login asked for in the background (a parent's new session, a
	// reload) is as good as done: wait for it rather than answer 503.
	force := e.pending.Load() > 0
	if wait, blocked := p.blocked(e, now); blocked && !force {
		return nil, &UnavailableError{Name: name, Reason: s.LastError, RetryAfter: wait}
	}
	why := "expiring"
	if s.State == StateStarting {
		why = "first login"
	}
	return p.login(ctx, e, s.Version, why, force)
}

// Invalidate is compare-and-refresh: if staleKey is still the credential's
// current key, it logs in anew (once, however many callers report the same
// key) and returns the new session; otherwise it returns the current one.
func (p *Pool) Invalidate(ctx context.Context, name, staleKey string) (*Snapshot, error) {
	e := p.entry(name)
	if e == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownCredential, truncate(name))
	}
	s := e.snap.Load()
	if s.Session == nil || s.Session.SessionKey != staleKey {
		return p.Get(ctx, name)
	}
	force := e.pending.Load() > 0
	if wait, blocked := p.blocked(e, p.clk.Now()); blocked && !force {
		return nil, &UnavailableError{Name: name, Reason: s.LastError, RetryAfter: wait}
	}
	snap, err := p.login(ctx, e, s.Version, "invalidated", force)
	if err != nil {
		p.dropIfDead(ctx, e, staleKey)
	}
	return snap, err
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
		if !p.track() {
			return nil, nil
		}
		defer p.wg.Done()
		// Like a login, the check outlives a caller who gives up; Close ends it.
		vctx, cancel := context.WithTimeout(p.ctx, p.opts.LoginTimeout)
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

// login runs one login for e through its singleflight. staleVersion is the
// snapshot version the caller found wanting: if the snapshot has moved on
// (someone else logged in meanwhile) and is valid, no new login is made.
// Unless force is set (a parent's new session, a reload, a changed secret),
// no login is made while the failure backoff lasts.
func (p *Pool) login(ctx context.Context, e *entry, staleVersion uint64, why string, force bool) (*Snapshot, error) {
	if p.closed.Load() {
		return nil, &UnavailableError{Name: e.name, Reason: errors.New("daemon is shutting down")}
	}
	ch := e.sf.DoChan("login", func() (any, error) {
		if !p.track() {
			return nil, &UnavailableError{Name: e.name, Reason: errors.New("daemon is shutting down")}
		}
		defer p.wg.Done()
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
		return p.doLogin(e, why)
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

// doLogin performs the upstream calls and records the outcome. It runs inside
// the entry's singleflight, so at most one runs per credential.
func (p *Pool) doLogin(e *entry, why string) (*Snapshot, error) {
	e.mu.Lock()
	cred := e.cred
	e.inflight = true
	e.mu.Unlock()
	before := e.snap.Load()
	if before.Session != nil && before.Valid(p.clk.Now(), p.margin(before)) {
		p.publish(e, func(s *Snapshot) { s.State = StateRefreshing })
	}

	ctx, cancel := context.WithTimeout(p.ctx, p.opts.LoginTimeout)
	defer cancel()
	start := p.clk.Now()
	sess, expires, err := p.authenticate(ctx, e, cred, start)

	e.mu.Lock()
	e.inflight = false
	e.mu.Unlock()
	log := p.log.With().Str("credential", e.name).Str("kind", string(cred.Kind)).Str("trigger", why).Logger()
	if err != nil {
		return nil, p.failed(e, cred, err, log)
	}
	e.mu.Lock()
	e.failures = 0
	e.notBefore = time.Time{}
	e.refusedWith = ""
	e.mu.Unlock()
	p.logins.WithLabelValues(e.name, "ok").Inc()
	snap := p.publish(e, func(s *Snapshot) {
		s.Session = sess
		s.ExpiresAt = expires
		s.State = StateOK
		s.LastError = nil
		s.ClientCode = cred.ClientCode
		s.APIURL = account(cred).URL()
	})
	refreshAt := p.policy.RefreshAt(start, expires)
	log.Info().Str("key", Fingerprint(sess.SessionKey)).Time("expiresAt", expires).
		Stringer("lifetime", expires.Sub(start)).Time("refreshAt", refreshAt).Msg("logged in")
	p.armTimer(e, refreshAt)
	p.scheduleExpiry(e, snap)
	p.scheduleJWT(e, snap)
	p.followers(e.name, sess.SessionKey)
	return snap, nil
}

// failed records a failed login and arms the retry.
func (p *Pool) failed(e *entry, cred config.Credential, err error, log zerolog.Logger) error {
	if p.ctx.Err() != nil {
		// Shutting down: the login was cancelled, not refused.
		log.Debug().Err(err).Msg("login cancelled by shutdown")
		return &UnavailableError{Name: e.name, Reason: errors.New("daemon is shutting down")}
	}
	now := p.clk.Now()
	e.mu.Lock()
	e.failures++
	n := e.failures
	wait := p.policy.Backoff(err, n, now)
	e.notBefore = now.Add(wait)
	if k := refresher.Classify(err); k == refresher.Refused || k == refresher.Permanent {
		e.refusedWith = secretFingerprint(cred)
	} else {
		e.refusedWith = ""
	}
	e.mu.Unlock()
	p.logins.WithLabelValues(e.name, resultClass(err)).Inc()
	p.failures.WithLabelValues(e.name).Inc()

	cur := e.snap.Load()
	state := StateExpired
	if cur.Valid(now, p.margin(cur)) {
		state = StateFailing
	}
	p.publish(e, func(s *Snapshot) { s.State = state; s.LastError = err })
	ev := log.Warn()
	if state == StateExpired {
		ev = log.Error()
	}
	ev.Err(err).Int("attempt", n).Stringer("retryIn", wait).Str("state", string(state)).Msg("login failed")
	next := now.Add(wait)
	if e.refusedWithSet() && wait > SecretPoll {
		// Look at the secret now and then: a changed one is tried at once.
		next = now.Add(SecretPoll)
	}
	p.armTimer(e, next)
	return &UnavailableError{Name: e.name, Reason: err, RetryAfter: wait}
}

func resultClass(err error) string {
	if c := upstream.CodeOf(err); c != 0 {
		return fmt.Sprintf("erply_%d", c)
	}
	var ue *upstream.Error
	switch {
	case errors.As(err, &ue) && ue.HTTPStatus != 0:
		return fmt.Sprintf("http_%d", ue.HTTPStatus)
	case errors.Is(err, upstream.ErrBadReply):
		return "bad_reply"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "timeout"
	case errors.As(err, &ue):
		return "network"
	}
	return "config"
}

// scheduleExpiry arms a timer that publishes StateExpired once s's session
// enters its safety margin without having been replaced, so readiness,
// metrics and the listing show it even when nobody asks for the key.
func (p *Pool) scheduleExpiry(e *entry, s *Snapshot) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.expTimer != nil {
		e.expTimer.Stop()
	}
	if p.closed.Load() {
		return
	}
	version := s.Session.SessionKey
	at := s.ExpiresAt.Add(-p.margin(s))
	e.expTimer = p.clk.AfterFunc(at.Sub(p.clk.Now()), func() {
		cur := e.snap.Load()
		if cur.Session == nil || cur.Session.SessionKey != version || cur.State == StateExpired {
			return
		}
		p.publish(e, func(s *Snapshot) { s.State = StateExpired })
		p.log.Warn().Str("credential", e.name).Str("key", Fingerprint(version)).Msg("session expired without a replacement")
	})
}

func (p *Pool) armTimer(e *entry, at time.Time) {
	if p.closed.Load() {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.timer != nil {
		e.timer.Stop()
	}
	e.nextRefresh = at
	e.timer = p.clk.AfterFunc(at.Sub(p.clk.Now()), func() { p.fire(e) })
}

// fire is the refresh timer's callback. It logs in synchronously (a late
// timer is harmless: Get checks expiry itself).
func (p *Pool) fire(e *entry) {
	if p.entry(e.name) != e || !p.track() {
		return
	}
	defer p.wg.Done()
	s := e.snap.Load()
	e.mu.Lock()
	nb, refused, cred := e.notBefore, e.refusedWith, e.cred
	e.mu.Unlock()
	if now := p.clk.Now(); refused != "" && now.Before(nb) && secretFingerprint(cred) == refused {
		next := now.Add(SecretPoll)
		if nb.Before(next) {
			next = nb
		}
		p.armTimer(e, next)
		return
	}
	// A pin credential is refreshed from its parent's refresh; if the parent
	// will refresh before this session's safety margin, wait for it.
	if at, ok := p.parentRefreshesFirst(e, s); ok {
		p.armTimer(e, at)
		return
	}
	_, _ = p.login(p.ctx, e, s.Version, "scheduled", false)
}

func (p *Pool) parentRefreshesFirst(e *entry, s *Snapshot) (time.Time, bool) {
	e.mu.Lock()
	cred := e.cred
	e.mu.Unlock()
	if cred.Kind != config.KindPIN || s.Session == nil {
		return time.Time{}, false
	}
	parent := p.entry(cred.Parent)
	if parent == nil {
		return time.Time{}, false
	}
	parent.mu.Lock()
	pnext, pfail := parent.nextRefresh, parent.failures
	parent.mu.Unlock()
	now := p.clk.Now()
	// Leave room (another margin) for the parent's login and the switch
	// after it; a fixed allowance would be longer than a short session.
	deadline := s.ExpiresAt.Add(-2 * p.margin(s))
	if pfail == 0 && pnext.After(now) && pnext.Before(deadline) {
		return pnext.Add(time.Second), true
	}
	return time.Time{}, false
}

// followers refreshes the pin credentials whose parent is name, after the
// parent's session changed.
func (p *Pool) followers(name, parentKey string) {
	p.mu.RLock()
	var kids []*entry
	for _, n := range p.order {
		c := p.entries[n]
		c.mu.Lock()
		// A child that switched from this very parent session (its first
		// login raced the parent's) needs no second switch.
		if c.cred.Kind == config.KindPIN && c.cred.Parent == name && c.parentKey != parentKey {
			kids = append(kids, c)
		}
		c.mu.Unlock()
	}
	p.mu.RUnlock()
	for _, k := range kids {
		if k.snap.Load().State == StateStarting {
			continue // its first login is under way or about to be, from the parent's
		}
		p.loginInBackground(k, "parent refreshed")
	}
}

// Fingerprint is a short, non-reversible identifier of a secret for logs.
func Fingerprint(secret string) string {
	if secret == "" {
		return "none"
	}
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:4])
}

func secretFingerprint(c config.Credential) string {
	var s config.Secret
	switch c.Kind {
	case config.KindPIN:
		s = c.PIN
	case config.KindIdentity, config.KindOAuth:
		s = c.Token
	default:
		s = c.Password
	}
	v, err := s.Read()
	if err != nil {
		return "unreadable"
	}
	return Fingerprint(c.Username + "\x00" + v)
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
