// Package fleet shares each credential's Erply session among the daemons of a fleet through Redis: one login per credential for all of them.
//
// In the pool's terms fleet mode is four things. Methods wraps each
// credential's login method: it takes the credential's lock in Redis,
// re-reads the shared record, adopts it when it is newer than what the pool
// serves, respects a shared failure hold, or else logs in and publishes the
// new session (fenced: only the lock holder, only if newer). RenewJWT does
// the same for JWT renewals (a pool.Renewer), and Lock holds the lock
// through a password change and publishes its session (a password.Locker).
// A follower adopts what others publish with pool.Install, on the pub/sub
// notice, on reconnect and by polling. When Redis is unreachable a breaker makes every decision fail at
// once; a login then waits a random delay and is made locally, and when
// Redis returns the freshest session wins again without a login.
//
// Session times use the injected clock; the waits that depend on Redis's
// own leases (lock waits, polls, the breaker, the fallback delay) use real
// time, because Redis measures its TTLs in real time.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// originFleet is the origin of sessions adopted from the fleet, as the
// pool logs it in "trigger".
const originFleet = "fleet"

// Defaults of the Options that are not configuration.
const (
	DefaultTimeout         = time.Second
	DefaultBreakerCooldown = 5 * time.Second
	DefaultPollInterval    = 10 * time.Second
	DefaultFallbackSpread  = 10 * time.Second
)

// Options configures a Fleet. Config must be enabled.
type Options struct {
	Config config.Fleet
	// Clock is the clock of session times (default clock.Real).
	Clock clock.Clock
	// Policy is the pool's: safety margins and the failure schedule a
	// shared hold follows.
	Policy     refresher.Policy
	Logger     zerolog.Logger
	Registerer prometheus.Registerer // optional
	// Timeout bounds dialling, each read and each write to Redis (default 1s).
	Timeout time.Duration
	// BreakerCooldown is how long every Redis command fails at once after
	// a failure before one probes again (default 5s).
	BreakerCooldown time.Duration
	// PollInterval is how often every shared record is re-read, for the
	// notices pub/sub loses (default 10s).
	PollInterval time.Duration
	// FallbackSpread bounds the random delay before a local login while
	// Redis is unreachable (default 10s), so that a fleet does not hit
	// Erply at once; the delay is never more than half the time the served
	// session has left, and none when there is no valid session.
	FallbackSpread time.Duration
	// Float64 returns random numbers in [0, 1); nil uses math/rand/v2.
	Float64 func() float64
}

// Pool is what the fleet asks of the pool; *pool.Pool implements it.
type Pool interface {
	Names() []string
	Snapshot(name string) (*pool.Snapshot, bool)
	Install(name string, g pool.Grant, origin string) (*pool.Snapshot, error)
}

// Mode is how a credential takes part in fleet mode, as /v1/sessions shows it.
type Mode string

// The modes.
const (
	ModeOff    Mode = "off"    // fleet mode is off
	ModeShared Mode = "shared" // the session is shared through Redis
	ModeLocal  Mode = "local"  // fleet mode is on, but this credential is not sharing now (see the reason)
)

// Fleet shares sessions through one Redis. Make it with New, wire its
// Methods (and itself as the pool's Renewer) into the pool, call Open with
// the pool before the pool's own Open, and Close after the pool's Close.
// Its methods are safe for concurrent use.
type Fleet struct {
	opts    Options
	clk     clock.Clock
	log     zerolog.Logger
	policy  refresher.Policy
	name    string
	channel string
	lockTTL time.Duration
	timeout time.Duration
	rdb     *redis.Client
	brk     *breaker
	m       metrics

	keys atomic.Pointer[[]config.Key]
	pool atomic.Pointer[poolRef]

	randMu sync.Mutex
	rnd    func() float64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan string // a reason to re-read every record now

	mu    sync.Mutex
	creds map[string]*credState
	ps    *redis.PubSub
}

type poolRef struct{ p Pool }

// credState is the fleet's view of one credential.
type credState struct {
	name string

	info     sync.Mutex // guards conf, id and localErr; never held across a call out
	conf     config.Credential
	id       identity
	localErr error // why it stays local: a record it cannot open (sticky until Reload or a readable record)

	mu        sync.Mutex // orders the follower's installs with the grants Login returns; guards the rest
	servedKey string     // the session this daemon serves, as far as the fleet made or saw it
	servedJWT string     // and its JWTs: a renewal bumps the version, not the key
	served    version
	parentKey string
	changing  int // password changes holding the lock (Lock): the follower leaves the credential alone

	noticeMu sync.Mutex
	notice   chan struct{} // closed at each notice for this credential
}

// New makes a Fleet from opts; it reads the keyring and parses the Redis
// URL but does not connect (the client dials when first used).
func New(opts Options) (*Fleet, error) {
	fc := opts.Config
	if !fc.Enabled() {
		return nil, errors.New("fleet: fleet mode is not configured")
	}
	rawURL, err := fc.RedisURL.Read()
	if err != nil {
		return nil, err
	}
	ro, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%s: %s", config.VarFleetRedisURL, strings.TrimPrefix(redactErr(err, rawURL), "redis: "))
	}
	keys, err := config.ReadKeyring(fc.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", config.VarFleetKeyFile, err)
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.Policy.Fraction == 0 {
		opts.Policy = refresher.Default()
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.BreakerCooldown <= 0 {
		opts.BreakerCooldown = DefaultBreakerCooldown
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.FallbackSpread <= 0 {
		opts.FallbackSpread = DefaultFallbackSpread
	}
	if fc.Name == "" {
		fc.Name = config.DefaultFleetName
	}
	if fc.LockTTL <= 0 {
		fc.LockTTL = config.DefaultFleetLockTTL
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Fleet{
		opts: opts, clk: opts.Clock, policy: opts.Policy,
		log:  opts.Logger.With().Str("component", "fleet").Logger(),
		name: fc.Name, channel: channelFor(fc.Name), lockTTL: fc.LockTTL, timeout: opts.Timeout,
		m:   newMetrics(),
		rnd: opts.Float64, ctx: ctx, cancel: cancel,
		kick: make(chan string, 1), creds: map[string]*credState{},
	}
	if f.rnd == nil {
		f.rnd = rand.Float64
	}
	f.keys.Store(&keys)
	f.brk = &breaker{cooldown: opts.BreakerCooldown, now: time.Now, changed: f.redisChanged}
	// Fail fast: short timeouts, no retries (the breaker decides when to
	// try again), and nothing the server may not support.
	if ro.DialTimeout == 0 {
		ro.DialTimeout = opts.Timeout
	}
	if ro.ReadTimeout == 0 {
		ro.ReadTimeout = opts.Timeout
	}
	if ro.WriteTimeout == 0 {
		ro.WriteTimeout = opts.Timeout
	}
	if ro.PoolTimeout == 0 {
		ro.PoolTimeout = opts.Timeout
	}
	ro.MaxRetries = -1
	ro.DialerRetries = 1
	ro.Protocol = 2
	ro.DisableIdentity = true
	ro.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	ro.Limiter = f.brk
	f.rdb = redis.NewClient(ro)
	if opts.Registerer != nil {
		if err := f.m.register(opts.Registerer); err != nil {
			cancel()
			f.rdb.Close()
			return nil, fmt.Errorf("fleet: register metrics: %w", err)
		}
	}
	f.m.up.Set(1)
	return f, nil
}

// redactErr hides the URL's password should an error quote it.
func redactErr(err error, rawURL string) string {
	msg := err.Error()
	if i := strings.Index(rawURL, "://"); i >= 0 {
		rest := rawURL[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if _, pw, ok := strings.Cut(rest[:at], ":"); ok && pw != "" {
				msg = strings.ReplaceAll(msg, pw, "xxxxx")
			}
		}
	}
	return msg
}

// Open starts following the fleet for p's credentials: the pub/sub
// listener and the poll. Call it before p.Open, so that the first logins
// already share.
func (f *Fleet) Open(p Pool) error {
	if p == nil {
		return errors.New("fleet: Open needs the pool")
	}
	if !f.pool.CompareAndSwap(nil, &poolRef{p}) {
		return errors.New("fleet: already open")
	}
	f.wg.Add(2)
	go f.subscribe()
	go f.poll()
	return nil
}

// Close stops following, waits for the fleet's goroutines and closes the
// Redis client. Locks held by logins still running are released as those
// end; call it after the pool's Close. It is safe to call more than once.
func (f *Fleet) Close() error {
	f.cancel()
	f.mu.Lock()
	if f.ps != nil {
		_ = f.ps.Close()
		f.ps = nil
	}
	f.mu.Unlock()
	f.wg.Wait()
	err := f.rdb.Close()
	if errors.Is(err, redis.ErrClosed) {
		err = nil
	}
	return err
}

// Reload re-reads the keyring file (SIGHUP). On success the new keys are
// used at once and every credential kept local because it could not open
// the shared record tries again; on error the old keys stay.
func (f *Fleet) Reload() error {
	keys, err := config.ReadKeyring(f.opts.Config.KeyFile)
	if err != nil {
		return fmt.Errorf("%s: %w", config.VarFleetKeyFile, err)
	}
	f.keys.Store(&keys)
	f.mu.Lock()
	for _, c := range f.creds {
		c.clearLocal()
	}
	f.mu.Unlock()
	f.log.Info().Int("keys", len(keys)).Str("encryptWith", keys[0].ID).Msg("keyring reloaded")
	f.poke("keyring reloaded")
	return nil
}

// Status is the credential's part in fleet mode for /v1/sessions, with the
// reason when it is local. A nil Fleet (fleet mode off) answers ModeOff.
func (f *Fleet) Status(name string) (Mode, string) {
	if f == nil {
		return ModeOff, ""
	}
	c := f.state(name)
	if c == nil {
		return ModeOff, ""
	}
	conf, _, localErr := c.get()
	if conf.FleetLocal {
		return ModeLocal, "kept local by " + config.Prefix + strings.ToUpper(name) + "_FLEET=false"
	}
	if localErr != nil {
		return ModeLocal, localErr.Error()
	}
	if open, cause := f.brk.state(); open {
		msg := ErrRedisUnreachable.Error()
		if cause != nil {
			msg += ": " + cause.Error()
		}
		return ModeLocal, msg
	}
	return ModeShared, ""
}

func (f *Fleet) keyring() []config.Key { return *f.keys.Load() }

func (f *Fleet) thePool() Pool {
	if r := f.pool.Load(); r != nil {
		return r.p
	}
	return nil
}

func (f *Fleet) random() float64 {
	f.randMu.Lock()
	defer f.randMu.Unlock()
	return f.rnd()
}

// track records the credential as the pool configured it (MethodFor is
// asked at start and again after a reload changed it).
func (f *Fleet) track(c config.Credential) *credState {
	f.mu.Lock()
	defer f.mu.Unlock()
	cs := f.creds[c.Name]
	if cs == nil {
		cs = &credState{name: c.Name, notice: make(chan struct{})}
		f.creds[c.Name] = cs
	}
	id := f.identityOf(c)
	cs.info.Lock()
	changed := cs.id != id
	if changed {
		cs.localErr = nil
	}
	cs.conf, cs.id = c, id
	cs.info.Unlock()
	if changed {
		// Another identity: what was known of the old one no longer applies.
		cs.mu.Lock()
		cs.servedKey, cs.servedJWT, cs.served, cs.parentKey = "", "", version{}, ""
		cs.mu.Unlock()
	}
	f.m.touch(c.Name)
	return cs
}

func (f *Fleet) state(name string) *credState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.creds[name]
}

// get returns the credential's settings, identity and local reason.
func (c *credState) get() (config.Credential, identity, error) {
	c.info.Lock()
	defer c.info.Unlock()
	return c.conf, c.id, c.localErr
}

// clearLocal ends a local stay; it reports whether there was one.
func (c *credState) clearLocal() bool {
	c.info.Lock()
	defer c.info.Unlock()
	was := c.localErr != nil
	c.localErr = nil
	return was
}

// servedVersion is the version of what the pool serves now: known when the
// fleet made or saw it, else estimated from the snapshot (a session
// installed from elsewhere). Called with c.mu held.
func (c *credState) servedVersion(snap *pool.Snapshot) version {
	if snap == nil || snap.Session == nil {
		return version{}
	}
	if snap.Session.SessionKey == c.servedKey {
		if jwtsOf(snap.Session) == c.servedJWT {
			return c.served
		}
		// The same session with other JWTs: an earlier generation.
		return version{Exp: c.served.Exp}
	}
	return version{Exp: expOf(snap.Session, snap.ExpiresAt)}
}

func jwtsOf(s *upstream.Session) string { return s.Token + "\x00" + s.IdentityToken }

func (c *credState) setServed(g pool.Grant, v version) {
	c.servedKey, c.servedJWT, c.served = g.Session.SessionKey, jwtsOf(g.Session), v
	if g.ParentKey != "" {
		c.parentKey = g.ParentKey
	}
}

// waitNotice returns a channel closed at the next notice for c.
func (c *credState) waitNotice() <-chan struct{} {
	c.noticeMu.Lock()
	defer c.noticeMu.Unlock()
	return c.notice
}

func (c *credState) notify() {
	c.noticeMu.Lock()
	close(c.notice)
	c.notice = make(chan struct{})
	c.noticeMu.Unlock()
}

// goLocal keeps c local because its record cannot be opened: counted,
// logged once, and never written by this daemon.
func (f *Fleet) goLocal(c *credState, err error) {
	f.m.decryptFailures.WithLabelValues(c.name).Inc()
	c.info.Lock()
	first := c.localErr == nil
	c.localErr = err
	c.info.Unlock()
	if first {
		f.log.Warn().Str("credential", c.name).Err(err).
			Msg("cannot open the fleet's shared session: this credential stays local and this daemon never writes its record")
	}
}

// redisChanged is the breaker's report.
func (f *Fleet) redisChanged(up bool, cause error) {
	if up {
		f.m.up.Set(1)
		f.log.Info().Msg("Redis reachable again: sharing sessions")
		f.poke("Redis reachable again")
		return
	}
	f.m.up.Set(0)
	ev := f.log.Warn().Err(cause)
	if isRefusal(cause) {
		ev = f.log.Error().Err(cause).Str("hint", "check the Redis URL's user and password, and that its ACL allows the keys and channels sessiond:* and the commands the fleet uses")
	}
	ev.Msg("Redis unreachable: credentials log in locally until it is back")
}

// isRefusal tells an authentication or ACL refusal from an outage.
func isRefusal(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	for _, p := range []string{"NOAUTH", "WRONGPASS", "NOPERM", "ERR AUTH", "ERR invalid password"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

// poke asks the poller to re-read every record now.
func (f *Fleet) poke(why string) {
	select {
	case f.kick <- why:
	default:
	}
}

// sleep waits d of real time or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// KeyFile is the keyring file Reload reads.
func (f *Fleet) KeyFile() string { return f.opts.Config.KeyFile }

// SetRedisLogger sends go-redis's own messages (dial failures and the
// like, whose meaning the fleet logs itself) to log at debug level instead
// of stderr. go-redis keeps one logger per process: call it once, from run.
func SetRedisLogger(log zerolog.Logger) {
	redis.SetLogger(redisLog{log.With().Str("component", "redis").Logger()})
}

type redisLog struct{ log zerolog.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug().Msgf(format, v...)
}
