// Package pool holds every credential's current Erply session: one login per credential at a time, refreshed ahead of expiry, never handed out expired.
//
// The package is split by stage: this file holds the pool, its entries and
// the reads; install.go the one step through which every new session comes
// in; login.go the login path (Get, Invalidate, backoff); renew.go the JWT
// renewals and expiry that the refresher's timers drive; reload.go Update.
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

// Upstream is what the pool itself asks of Erply, whatever the login
// method: whether a key is alive, and fresh JWTs for a session.
// *upstream.Client implements it.
type Upstream interface {
	GetSessionKeyInfo(ctx context.Context, acct upstream.Account, sessionKey string) (*upstream.SessionKeyInfo, error)
	GetJwtToken(ctx context.Context, acct upstream.Account, sessionKey string) (*upstream.JWT, error)
	GetIdentityToken(ctx context.Context, acct upstream.Account, sessionKey string) (*upstream.JWT, error)
}

// Options configures a Pool. Upstream and MethodFor are required.
type Options struct {
	Upstream Upstream
	// MethodFor returns how a credential logs in; it is asked once per
	// credential and again when a reload changes the credential.
	MethodFor   func(config.Credential) Method
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
	// Renewer, when set, is asked for JWT renewals (a fleet shares them);
	// nil fetches them from Upstream.
	Renewer Renewer
}

// Pool holds the credentials and their sessions. Its methods are safe for
// concurrent use. Make one with New, start it with Open, stop it with Close.
type Pool struct {
	opts   Options
	clk    clock.Clock
	log    zerolog.Logger
	policy refresher.Policy

	ctx    context.Context // cancelled by Close; parent of every entry's
	cancel context.CancelFunc
	work   work    // logins, checks and renewals in flight: Close waits for them
	bg     counter // background logins, for tests to wait on (export_test.go)

	reloadMu sync.Mutex   // one Update at a time
	mu       sync.RWMutex // guards entries and order: swapped together, never one without the other
	entries  map[string]*entry
	order    []string

	subMu sync.Mutex
	subs  map[int]func(*Snapshot)
	subID int

	logins   *prometheus.CounterVec
	failures *prometheus.CounterVec
}

// SecretPoll is how often a credential whose login was refused looks at its
// secret for a change.
const SecretPoll = refresher.SecretPoll

// counter counts work under way and lets anyone wait for a moment when
// none is; unlike a sync.WaitGroup, counting up may race with a wait. The
// zero value is ready to use.
type counter struct {
	mu   sync.Mutex
	n    int
	idle *sync.Cond
}

func (c *counter) add(d int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += d
	if c.n == 0 && c.idle != nil {
		c.idle.Broadcast()
	}
}

// wait returns once the count is zero.
func (c *counter) wait() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idle == nil {
		c.idle = sync.NewCond(&c.mu)
	}
	for c.n > 0 {
		c.idle.Wait()
	}
}

// work tracks goroutines doing upstream work so that Close can wait for
// them; once closed it refuses new work.
type work struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// start registers one unit of work; false once closed.
func (w *work) start() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	w.wg.Add(1)
	return true
}

func (w *work) done() { w.wg.Done() }

// close refuses new work and waits for the work under way.
func (w *work) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.wg.Wait()
}

func (w *work) isClosed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closed
}

// entry is one credential. It is complete when made: a reader never sees a
// name without its entry.
type entry struct {
	p      *Pool
	name   string
	snap   atomic.Pointer[Snapshot]
	sf     singleflight.Group
	timer  *refresher.Timer
	ctx    context.Context // ends when the credential is removed or the pool closes
	cancel context.CancelFunc

	mu           sync.Mutex // guards the fields below and orders publishes
	cred         config.Credential
	method       Method
	gen          uint64 // bumped when a reload changes cred: a login of an older one is not installed
	failures     int    // consecutive failed logins
	notBefore    time.Time
	refusedWith  string // fingerprint of the secret a refused login used
	jwtFailures  int    // consecutive failed JWT renewals
	lastLogin    time.Time
	lastLifetime time.Duration
	parentKey    string    // the parent session key the current session was made on
	installedAt  time.Time // when the current session was installed
	forced       forcedBucket
	checkedKey   string    // the key Erply was last asked about for a forced login…
	checkedAt    time.Time // …when…
	checkedErr   error     // …and its answer (nil: alive)

	pending      atomic.Int32 // forced background logins asked for and not yet done
	warnedLength atomic.Bool  // an overlong sessionLength was logged once
}

// New makes a Pool; nothing happens until Open.
func New(opts Options) (*Pool, error) {
	if opts.Upstream == nil {
		return nil, errors.New("pool: Upstream is required")
	}
	if opts.MethodFor == nil {
		return nil, errors.New("pool: MethodFor is required")
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
		p.entries[c.Name] = p.newEntry(c)
		p.order = append(p.order, c.Name)
	}
	return p, nil
}

// newEntry makes a complete entry for c, not yet visible to readers.
func (p *Pool) newEntry(c config.Credential) *entry {
	ctx, cancel := context.WithCancel(p.ctx)
	e := &entry{p: p, name: c.Name, cred: c, method: p.opts.MethodFor(c), ctx: ctx, cancel: cancel}
	e.timer = refresher.NewTimer(p.clk, e)
	e.snap.Store(&Snapshot{
		Name: c.Name, Kind: string(c.Kind), ClientCode: c.ClientCode,
		APIURL: account(c).URL(), State: StateStarting,
		AllowUIDs: c.AllowUIDs, AllowGIDs: c.AllowGIDs, Version: 1,
	})
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
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.opts.StartConcurrency)
	for _, n := range p.Names() {
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

// Close stops every timer, cancels the logins in flight and waits for them
// to end. It is safe to call more than once.
func (p *Pool) Close() error {
	p.cancel()
	p.mu.RLock()
	for _, e := range p.entries {
		e.timer.Stop()
	}
	p.mu.RUnlock()
	p.work.close()
	return nil
}

func (p *Pool) entry(name string) *entry {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.entries[name]
}

// Names returns the configured credential names in configuration order.
func (p *Pool) Names() []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return append([]string(nil), p.order...)
}

// Credential returns a credential's current settings (as last applied by
// New or Update), for parts that act on a credential beside the pool, such
// as a password rotation.
func (p *Pool) Credential(name string) (config.Credential, bool) {
	e := p.entry(name)
	if e == nil {
		return config.Credential{}, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cred, true
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

// margin is the safety margin for a snapshot's session.
func (p *Pool) margin(s *Snapshot) time.Duration {
	if s == nil || s.Session == nil || s.Session.SessionLength <= 0 {
		return p.policy.MarginFor(time.Duration(1<<62 - 1))
	}
	return p.policy.MarginFor(time.Duration(s.Session.SessionLength) * time.Second)
}

// MarginOf is the safety margin that applies to s: a key with less than this
// left is never served.
func (p *Pool) MarginOf(s *Snapshot) time.Duration { return p.margin(s) }

// publish stores a new snapshot for e, made by mutate from the current one
// (with the next version), and tells subscribers. Nothing is published for
// a credential after its removal was (the last snapshot, with Removed
// set); mutate runs with e.mu held.
func (p *Pool) publish(e *entry, mutate func(s *Snapshot)) *Snapshot {
	e.mu.Lock()
	old := e.snap.Load()
	if old.Removed {
		e.mu.Unlock()
		return old
	}
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

// Fingerprint is a short, non-reversible identifier of a secret for logs.
func Fingerprint(secret string) string {
	if secret == "" {
		return "none"
	}
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:4])
}

// secretFingerprint identifies the secret a credential logs in with, so a
// refused login can tell when the operator has changed it.
func secretFingerprint(c config.Credential) string {
	v, err := c.LoginSecret().Read()
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
