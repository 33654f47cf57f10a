// Package daemon owns the running daemon: it wires the pool, the local API, the proxy, the sinks and the systemd notifier from a configuration, serves until told to stop, and applies reloads.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/fleet"
	"github.com/erply-sessiond/erply-sessiond/internal/envwatch"
	"github.com/erply-sessiond/erply-sessiond/localapi"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/password"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/proxy"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/sdnotify"
	"github.com/erply-sessiond/erply-sessiond/sink"
	"github.com/erply-sessiond/erply-sessiond/state"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// ShutdownTimeout bounds how long Run waits for requests in flight once its
// context ends (a proxied request waits at most 30 s for its turn).
const ShutdownTimeout = 10 * time.Second

// Options are what a Daemon takes from its caller instead of finding for
// itself. The zero value of every field but Environ's picks a default.
type Options struct {
	// Environ is the process environment as main read it, once. A reload
	// loads the configuration from it again (and from the SESSIOND_ENV_FILE
	// it names); sd_notify (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID) and
	// socket activation (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES) read their
	// variables from it. The daemon reads nothing from the process
	// environment itself.
	Environ []string
	// LogOutput receives the log lines, in the configured format; nil
	// discards them.
	LogOutput io.Writer
	// Clock times sessions, reloads and watchdog pings; nil is the system clock.
	Clock clock.Clock
	// Upstream overrides the Erply client's settings (retry waits, HTTP
	// client). Its Logger, Registerer and UserAgent are set by New, and its
	// Clock when nil.
	Upstream upstream.Options
	// Registry receives every metric and is what /metrics serves; nil makes
	// a new one.
	Registry *prometheus.Registry
	// Version is logged at start and sent in the User-Agent.
	Version string
	// Ready, when set, is called once, after READY=1: the socket listens and
	// every credential holds a session or has a definite error.
	Ready func()
	// EnvWatchInterval is how often SESSIOND_ENV_FILE_WATCH looks at the env
	// file (default envwatch.DefaultInterval).
	EnvWatchInterval time.Duration
	// ShutdownLoginGrace is how long, once Run's context ends, the logins
	// still running may go on (one that completes is installed, and saved
	// for the next start with a state directory) before they are cancelled
	// so that requests waiting for them get 503 within ShutdownTimeout.
	// Default ShutdownTimeout / 2.
	ShutdownLoginGrace time.Duration
}

// Daemon is one running instance of erply-sessiond. Make it with New, serve
// with Run (once), and call Reload while Run runs; Reload is safe for
// concurrent use.
type Daemon struct {
	opts     Options
	clk      clock.Clock
	log      zerolog.Logger
	level    *levelWriter
	up       *upstream.Client
	pool     *pool.Pool
	api      *localapi.Server
	sinks    *sink.Writer
	state    *state.Store // nil without a state directory
	fleet    *fleet.Fleet // nil without fleet mode
	rot      *password.Rotator
	policy   refresher.Policy
	notifier *sdnotify.Notifier
	watcher  *envwatch.Watcher // nil unless SESSIOND_ENV_FILE_WATCH
	getenv   func(string) string
	cancels  []func() // pool subscriptions, ended by Run

	started    atomic.Bool
	ready      atomic.Bool
	lastReload atomic.Pointer[localapi.ReloadStatus]

	tcpSessions bool // SESSIOND_HTTP_SESSIONS as at start: the TCP listener's setting until a restart

	mu       sync.Mutex // serialises reloads; guards the fields below
	cfg      *config.Config
	httpAddr string
}

// New builds a daemon for cfg: the logger, the Erply client, the pool, the
// sinks, the proxy, the local API and the notifier. Nothing listens, logs in
// or starts a goroutine before Run.
func New(cfg *config.Config, o Options) (*Daemon, error) {
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.LogOutput == nil {
		o.LogOutput = io.Discard
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.ShutdownLoginGrace <= 0 || o.ShutdownLoginGrace > ShutdownTimeout {
		o.ShutdownLoginGrace = ShutdownTimeout / 2
	}
	d := &Daemon{opts: o, clk: o.Clock, cfg: cfg, getenv: lookup(o.Environ), tcpSessions: cfg.HTTPSessions}
	d.level = newLevelWriter(o.LogOutput, cfg.LogFormat)
	d.level.setLevel(cfg.LogLevel)
	// The writer is also the sampler: events below the current level are
	// never built (the per-request debug line costs nothing at info).
	d.log = zerolog.New(d.level).Sample(d.level).With().Timestamp().Logger()
	for _, w := range cfg.Warnings {
		d.log.Warn().Msg(w)
	}

	reg := o.Registry
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("daemon: register metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("daemon: register metrics: %w", err)
	}

	upOpts := o.Upstream
	upOpts.Logger = d.log // labelled component=upstream by upstream.New
	upOpts.Registerer = reg
	upOpts.UserAgent = "erply-sessiond/" + o.Version
	if upOpts.Clock == nil {
		upOpts.Clock = d.clk
	}
	d.up = upstream.New(upOpts)

	policy := refresher.Default()
	policy.Fraction = cfg.RefreshFraction
	policy.Margin = cfg.ExpiryMargin
	// A password credential's logins and its rotations take the password
	// file's lock, and a login refused while a rotation's PASSWORD_FILE.next
	// is left over tries it once.
	files := password.NewFiles(d.log)
	methodFor := files.Methods(login.Methods(d.up))
	var renewer pool.Renewer
	if cfg.Fleet.Enabled() {
		// Fleet mode wraps every credential's login: take the shared lock,
		// adopt a fresher shared session or log in and publish (the fleet
		// lock is taken before the password file's).
		fleet.SetRedisLogger(d.log)
		fl, err := fleet.New(fleet.Options{Config: cfg.Fleet, Clock: d.clk, Policy: policy,
			Logger: d.log, Registerer: reg})
		if err != nil {
			return nil, err
		}
		d.fleet = fl
		methodFor, renewer = fl.Methods(methodFor), fl
	}
	p, err := pool.New(pool.Options{
		Upstream: d.up, MethodFor: methodFor, Renewer: renewer, Credentials: cfg.Credentials, Clock: d.clk, Policy: policy,
		Logger: d.log, Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	d.pool = p
	d.policy = policy

	var locker password.Locker // nil without fleet mode: not a nil *fleet.Fleet
	if d.fleet != nil {
		// The daemon that rotates holds the credential's fleet lock through
		// the change and publishes the new session as it lets go.
		locker = d.fleet
	}
	d.rot, err = password.NewRotator(password.Options{Sessions: p, Upstream: d.up, Files: files,
		Clock: d.clk, Logger: d.log, Registerer: reg, Locker: locker})
	if err != nil {
		return nil, err
	}

	d.sinks = sink.New(sink.Options{Logger: d.log, Clock: d.clk, Registerer: reg})
	d.sinks.SetTargets(sinkTargets(cfg))
	px := proxy.New(proxy.Options{
		Sessions: p, Clock: d.clk, Logger: d.log, Registerer: reg,
		Concurrency: cfg.ProxyConcurrency, Upstream: d.up,
	})
	d.api = localapi.New(localapi.Options{
		Sessions: p, Clock: d.clk, Logger: d.log.With().Str("component", "localapi").Logger(),
		Registerer: reg, Gatherer: reg,
		EndpointCooldown: cfg.EndpointCooldown, TCPSessions: cfg.HTTPSessions,
		LastReload: d.lastReload.Load, Proxy: px, Rotator: d.rot, SinkError: d.sinks.Failing,
		FleetStatus: func(name string) (string, string) {
			mode, why := d.fleet.Status(name) // a nil Fleet answers "off"
			return string(mode), why
		},
	})
	d.notifier = sdnotify.New(d.getenv, d.clk, d.log)
	if cfg.StateDir != "" {
		// Opened here, not in Run: a second daemon on the same directory
		// is refused before it listens or logs in.
		st, err := state.Open(cfg.StateDir, state.Options{Clock: d.clk, Logger: d.log, Registerer: reg, CheckTimeout: 5 * time.Second})
		if errors.Is(err, state.ErrUnsafeDir) {
			return nil, &config.ValidationError{Problems: []config.Problem{{Var: cfg.StateDirVar, Msg: err.Error()}}}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cfg.StateDirVar, err)
		}
		d.state = st
	}
	if cfg.EnvFileWatch && cfg.EnvFile != "" {
		d.watcher = &envwatch.Watcher{Path: cfg.EnvFile, Interval: o.EnvWatchInterval, Clock: d.clk,
			Changed: func() {
				d.log.Info().Str("file", cfg.EnvFile).Msg("env file changed: reloading")
				_ = d.Reload() // a rejected file is logged and shown in /readyz by Reload
			},
			Failed: func(err error) {
				d.log.Warn().Err(err).Str("file", cfg.EnvFile).Msg("env file cannot be read; the configuration in use keeps running")
			},
		}
		// The baseline is the file as cfg was just read from it, not as it
		// is once Run listens: a change in between is not lost.
		d.watcher.Prime()
	}
	d.cancels = append(d.cancels,
		p.Subscribe(d.sinks.Apply),
		p.Subscribe(func(*pool.Snapshot) { d.notifier.Status(statusLine(p.Snapshots())) }),
	)
	return d, nil
}

// lookup answers a variable from environ as os.Getenv would from the
// process environment (the first of duplicate entries wins).
func lookup(environ []string) func(string) string {
	return func(key string) string {
		for _, kv := range environ {
			if k, v, ok := strings.Cut(kv, "="); ok && k == key {
				return v
			}
		}
		return ""
	}
}

// Run listens (on the socket systemd passed, else on SESSIOND_SOCKET, and on
// SESSIOND_HTTP_ADDR when set), logs every credential in, and serves until
// ctx ends; then it tells systemd STOPPING=1, lets requests in flight finish
// (at most ShutdownTimeout), removes a socket it made, and returns nil. It
// returns an error when it cannot listen or a listener fails. Run may be
// called once.
func (d *Daemon) Run(ctx context.Context) error {
	if !d.started.CompareAndSwap(false, true) {
		return errors.New("daemon: Run called twice")
	}
	defer d.up.CloseIdleConnections()
	if d.fleet != nil {
		defer d.fleet.Close() // after the pool's Close: logins still running release their locks
	}
	defer d.sinks.Close() // after the pool and the subscriptions: no Apply comes later
	defer d.pool.Close()
	defer d.rot.Close() // before the pool: a change already sent to Erply finishes
	defer func() {
		for _, cancel := range d.cancels {
			cancel()
		}
	}()
	d.mu.Lock()
	cfg := d.cfg
	d.mu.Unlock()

	if d.state != nil {
		// Before listening: a saved session that is still good is served
		// from the first request, and no caller's request starts a login
		// that the restore would have made unnecessary.
		defer d.state.Close()
		d.state.Restore(ctx, d.pool, d.up, cfg.Credentials, d.policy)
		defer d.state.Follow(d.pool)()
	}
	if d.fleet != nil {
		// After the restore, before the first logins: they already share.
		if err := d.fleet.Open(d.pool); err != nil {
			return err
		}
	}

	unixL, err := d.listenUnix(cfg)
	if err != nil {
		d.api.Shutdown(context.Background())
		return err
	}
	var tcpL net.Listener
	if cfg.HTTPAddr != "" {
		if tcpL, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			unixL.Close()
			d.api.Shutdown(context.Background())
			return fmt.Errorf("%s: %w", config.VarHTTPAddr, err)
		}
		d.mu.Lock()
		d.httpAddr = tcpL.Addr().String()
		d.mu.Unlock()
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveErr(d.api.Serve(unixL, false)) })
	if tcpL != nil {
		g.Go(func() error { return serveErr(d.api.Serve(tcpL, true)) })
	}
	d.log.Info().Str("version", d.opts.Version).Str("socket", unixL.Addr().String()).Str("httpAddr", d.HTTPAddr()).
		Int("credentials", len(cfg.Credentials)).Msg("serving")
	d.logTCP(d.HTTPAddr(), cfg.Credentials)

	g.Go(func() error {
		if err := d.pool.Open(gctx); err != nil {
			return nil // shutting down before the first round finished
		}
		status := statusLine(d.pool.Snapshots())
		d.notifier.Status(status)
		d.notifier.Ready()
		d.ready.Store(true)
		d.log.Info().Str("status", status).Msg("ready")
		if d.opts.Ready != nil {
			d.opts.Ready()
		}
		return nil
	})
	g.Go(func() error { return d.notifier.RunWatchdog(gctx, func() bool { return true }) })
	if d.watcher != nil {
		d.log.Info().Str("file", cfg.EnvFile).Msg("watching the env file: a change is applied as SIGHUP would")
		g.Go(func() error { return d.watcher.Run(gctx) })
	}
	g.Go(func() error {
		<-gctx.Done()
		d.notifier.Stopping()
		d.log.Info().Msg("shutting down")
		return d.shutdownAPI()
	})
	err = g.Wait()
	if err != nil && ctx.Err() == nil {
		return err
	}
	d.log.Info().Msg("stopped")
	return nil
}

// shutdownAPI stops the local API: no new connections, requests in flight
// finish within ShutdownTimeout. A request still waiting for a login once
// Options.ShutdownLoginGrace has passed gets 503: the logins are cancelled
// then, rather than its connection closed when the time is up.
func (d *Daemon) shutdownAPI() error {
	ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- d.api.Shutdown(ctx) }()
	grace := time.NewTimer(d.opts.ShutdownLoginGrace)
	defer grace.Stop()
	select {
	case err := <-stopped:
		return err
	case <-grace.C:
	}
	d.log.Info().Msg("requests still wait for logins: cancelling the logins so that they are answered 503")
	d.pool.Close()
	return <-stopped
}

// logTCP says what the TCP listener at addr serves: health, readiness
// and metrics only, or also the sessions of the credentials without
// ALLOW_UIDS or ALLOW_GIDS (TCP has no peer credentials: the restricted
// ones are served on the socket only).
func (d *Daemon) logTCP(addr string, creds []config.Credential) {
	if addr == "" {
		return
	}
	if !d.tcpSessions {
		d.log.Info().Str("httpAddr", addr).Msg("the TCP listener serves health, readiness and metrics only")
		return
	}
	tcp, socketOnly := []string{}, []string{}
	for _, c := range creds {
		if len(c.AllowUIDs) == 0 && len(c.AllowGIDs) == 0 {
			tcp = append(tcp, c.Name)
		} else {
			socketOnly = append(socketOnly, c.Name)
		}
	}
	d.log.Info().Str("httpAddr", addr).Strs("credentials", tcp).Strs("socketOnly", socketOnly).
		Msg("the TCP listener serves these credentials' sessions (loopback Host and header " + localapi.RequestHeader + ": 1 required); those with ALLOW_UIDS or ALLOW_GIDS only on the socket")
}

// HTTPAddr is the address the TCP listener bound, "" without
// SESSIOND_HTTP_ADDR or before Run listens: with port 0 in HTTP_ADDR only
// this says which port was chosen.
func (d *Daemon) HTTPAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.httpAddr
}

// Subscribe calls f with every new snapshot of any credential, as
// pool.Pool.Subscribe does (synchronously, so f must be quick); cancel stops
// the calls. It is how an embedding program or a test learns of a session
// change without polling.
func (d *Daemon) Subscribe(f func(*pool.Snapshot)) (cancel func()) { return d.pool.Subscribe(f) }

func serveErr(err error) error {
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// listenUnix takes the socket from systemd (socket activation) or makes it.
// An inherited socket is never removed; one made here is removed at shutdown.
func (d *Daemon) listenUnix(cfg *config.Config) (net.Listener, error) {
	ls, names, err := sdnotify.Listeners(d.getenv)
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	// Pick closes the others; a listener made from an inherited fd is never unlinked.
	if l, name := sdnotify.Pick(ls, names, sdnotify.SocketName); l != nil {
		d.log.Info().Str("name", name).Str("addr", l.Addr().String()).
			Msg("using the socket passed by systemd; SESSIOND_SOCKET and SESSIOND_SOCKET_MODE are ignored")
		return l, nil
	}
	l, err := localapi.ListenUnix(cfg.Socket, cfg.SocketMode)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", config.VarSocket, err)
	}
	return l, nil
}

func sinkTargets(cfg *config.Config) map[string]sink.Target {
	t := map[string]sink.Target{}
	for _, c := range cfg.Credentials {
		if c.SinkFile != "" {
			t[c.Name] = sink.Target{Path: c.SinkFile, Mode: c.SinkMode}
		}
	}
	return t
}

// statusLine is the one-line summary for systemd's STATUS=.
func statusLine(snaps []*pool.Snapshot) string {
	names := map[pool.State][]string{}
	for _, s := range snaps {
		names[s.State] = append(names[s.State], s.Name)
	}
	states := make([]string, 0, len(names))
	for st := range names {
		states = append(states, string(st))
	}
	sort.Strings(states)
	parts := make([]string, 0, len(states))
	for _, st := range states {
		parts = append(parts, fmt.Sprintf("%s: %s", st, strings.Join(names[pool.State(st)], ",")))
	}
	return fmt.Sprintf("%d credentials; %s", len(snaps), strings.Join(parts, "; "))
}

// Reload is what SIGHUP asks for: it loads the configuration again from
// Options.Environ and the env file it names, re-reading every _FILE secret.
// Added credentials log in, removed ones are dropped, changed ones log in
// anew while their old session is served, unchanged ones keep their
// sessions; SESSIOND_LOG_LEVEL and the sink files apply at once, listener
// settings only after a restart. A configuration with problems is logged,
// shown in /readyz's lastReload, and returned (a *config.ValidationError)
// while the old one keeps running. Once the daemon is ready, systemd hears
// RELOADING=1 … READY=1 around it. Reload returns without waiting for the
// logins it starts.
func (d *Daemon) Reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ready.Load() {
		d.notifier.Reloading()
		defer d.notifier.Ready()
	}
	now := d.clk.Now()
	cfg, err := config.Load(d.opts.Environ)
	if err != nil {
		var ve *config.ValidationError
		ev := d.log.Error().Err(err)
		if errors.As(err, &ve) {
			probs := make([]string, len(ve.Problems))
			for i, p := range ve.Problems {
				probs[i] = p.String()
			}
			ev = d.log.Error().Strs("problems", probs)
		}
		ev.Msg("reload rejected; the previous configuration keeps running")
		d.lastReload.Store(&localapi.ReloadStatus{OK: false, Error: err.Error(), At: now})
		return err
	}
	old := d.cfg
	if cfg.Socket != old.Socket || cfg.SocketMode != old.SocketMode || cfg.HTTPAddr != old.HTTPAddr || cfg.HTTPSessions != old.HTTPSessions {
		d.log.Warn().Msg("reload: socket, socket mode and HTTP listener settings take effect only after a restart")
	}
	if d.fleet != nil {
		if err := d.fleet.Reload(); err != nil {
			d.log.Error().Err(err).Msg("fleet keyring not reloaded; the old keys are kept")
		}
	}
	if cfg.Fleet != old.Fleet {
		d.log.Warn().Msg("reload: the SESSIOND_FLEET_* settings take effect only after a restart (the keyring file is re-read now)")
	}
	if cfg.StateDir != old.StateDir || cfg.EnvFileWatch != old.EnvFileWatch {
		d.log.Warn().Msg("reload: SESSIOND_STATE_DIR and SESSIOND_ENV_FILE_WATCH take effect only after a restart")
	}
	for _, w := range cfg.Warnings {
		d.log.Warn().Msg(w)
	}
	d.level.setLevel(cfg.LogLevel)
	d.sinks.SetTargets(sinkTargets(cfg))
	d.pool.Update(cfg.Credentials)
	if d.state != nil {
		d.state.SetCredentials(cfg.Credentials)
	}
	d.pool.SecretsChanged()
	d.cfg = cfg
	d.lastReload.Store(&localapi.ReloadStatus{OK: true, At: now})
	names := make([]string, len(cfg.Credentials))
	for i, c := range cfg.Credentials {
		names[i] = c.Name
	}
	d.log.Info().Strs("credentials", names).Msg("configuration reloaded")
	// The listener keeps its start-up settings; the credentials it serves
	// follow the new configuration.
	d.logTCP(d.httpAddr, cfg.Credentials)
	return nil
}
