package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/localapi"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/proxy"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/sdnotify"
	"github.com/erply-sessiond/erply-sessiond/sink"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

const serveUsage = `Usage: erply-sessiond [serve]

Runs the daemon: logs in every credential in SESSIOND_CREDENTIALS, keeps the
sessions alive, and serves them on the Unix socket SESSIOND_SOCKET until
SIGTERM or SIGINT. SIGHUP reloads SESSIOND_ENV_FILE and the _FILE secrets.

Global variables (defaults in brackets):
  SESSIOND_CREDENTIALS        comma-separated credential names (a-z, 0-9, _)
  SESSIOND_SOCKET             [/run/erply-sessiond/sessiond.sock]
  SESSIOND_SOCKET_MODE        octal [0660]
  SESSIOND_HTTP_ADDR          loopback host:port for health/readiness/metrics [off]
  SESSIOND_HTTP_SESSIONS      also serve session routes on HTTP_ADDR (header X-Sessiond-Request: 1) [false]
  SESSIOND_LOG_LEVEL          debug | info | warn | error [info]
  SESSIOND_LOG_FORMAT         json | console [json]
  SESSIOND_API_URL            [https://{clientCode}.erply.com/api/]
  SESSIOND_ENDPOINT_COOLDOWN  [30s]
  SESSIOND_REFRESH_FRACTION   [0.67]
  SESSIOND_EXPIRY_MARGIN      [60s]
  SESSIOND_PROXY_CONCURRENCY  upstream requests at once per client code [10]
  SESSIOND_ENV_FILE           KEY=VALUE file re-read on SIGHUP (wins over the environment)

Per credential NAME (SESSIOND_<NAME>_…):
  KIND            password | pin | identity | oauth [password]
  CLIENT_CODE     Erply account code (not for pin)
  USERNAME, PASSWORD or PASSWORD_FILE      (password)
  PARENT, PIN or PIN_FILE                  (pin)
  TOKEN_FILE or TOKEN                      (identity, oauth)
  SESSION_LENGTH  seconds, 1..86400 [3600]
  API_URL, ALLOW_UIDS, ALLOW_GIDS, SINK_FILE, SINK_MODE [0640]
`

func serveCommand(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("erply-sessiond", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, serveUsage) }
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	cfg, err := loadConfig(environ, stderr)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return serve(ctx, cfg, deps{environ: environ, logOut: stderr, hup: hup, notify: true})
}

func flagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return exitError{code: 2, err: err}
}

// loadConfig loads and validates, printing every problem on its own line.
func loadConfig(environ []string, stderr io.Writer) (*config.Config, error) {
	cfg, err := config.Load(environ)
	var ve *config.ValidationError
	if errors.As(err, &ve) {
		for _, p := range ve.Problems {
			fmt.Fprintln(stderr, "config:", p.String())
		}
		return nil, exitError{code: 2, err: fmt.Errorf("invalid configuration (%d problems)", len(ve.Problems))}
	}
	return cfg, err
}

// deps are the parts of the environment serve does not build itself.
type deps struct {
	environ []string
	logOut  io.Writer
	hup     <-chan os.Signal // reload requests
	notify  bool             // speak sd_notify and accept socket activation
	clock   clock.Clock
	// upstream overrides retry waits (tests shrink them).
	upstream upstream.Options
	// ready is called once the socket listens and the first login round is over.
	ready func(*daemon)
}

// daemon is one running instance: the parts serve built.
type daemon struct {
	cfg      *config.Config
	log      zerolog.Logger
	level    *levelWriter
	reg      *prometheus.Registry
	up       *upstream.Client
	pool     *pool.Pool
	api      *localapi.Server
	proxy    *proxy.Proxy
	sinks    *sink.Writer
	notifier *sdnotify.Notifier
	socket   string // the socket path, "" when inherited from systemd
	// httpAddr is the address the TCP listener bound ("" without HTTP_ADDR):
	// with port 0 in HTTP_ADDR only this says which port was chosen.
	httpAddr string

	reloadMu   sync.Mutex
	lastReload *localapi.ReloadStatus
}

func serve(ctx context.Context, cfg *config.Config, d deps) error {
	if d.clock == nil {
		d.clock = clock.Real{}
	}
	lw := newLevelWriter(d.logOut, cfg.LogFormat)
	// The writer is also the sampler: events below the current level are
	// never built (the per-request debug line costs nothing at info).
	log := zerolog.New(lw).Sample(lw).With().Timestamp().Logger()
	lw.setLevel(cfg.LogLevel)
	for _, w := range cfg.Warnings {
		log.Warn().Msg(w)
	}

	dm := &daemon{cfg: cfg, log: log, level: lw, reg: prometheus.NewRegistry()}
	dm.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	upOpts := d.upstream
	upOpts.Logger = log.With().Str("component", "upstream").Logger()
	upOpts.Registerer = dm.reg
	upOpts.UserAgent = "erply-sessiond/" + version
	dm.up = upstream.New(upOpts)
	defer dm.up.CloseIdleConnections()

	policy := refresher.Default()
	policy.Fraction = cfg.RefreshFraction
	policy.Margin = cfg.ExpiryMargin
	p, err := pool.New(pool.Options{MethodFor: login.Methods(dm.up),
		Upstream: dm.up, Credentials: cfg.Credentials, Clock: d.clock, Policy: policy,
		Logger: log, Registerer: dm.reg,
	})
	if err != nil {
		return err
	}
	dm.pool = p
	defer p.Close()

	dm.sinks = sink.New(log)
	dm.sinks.SetTargets(sinkTargets(cfg))
	defer p.Subscribe(dm.sinks.Apply)()

	dm.proxy = proxy.New(proxy.Options{
		Sessions: p, Clock: d.clock, Logger: log, Registerer: dm.reg,
		Concurrency: cfg.ProxyConcurrency, HTTPClient: upOpts.HTTPClient,
	})
	dm.api = localapi.New(localapi.Options{
		Sessions: p, Clock: d.clock, Logger: log.With().Str("component", "localapi").Logger(),
		Registerer: dm.reg, Gatherer: dm.reg, Margin: cfg.ExpiryMargin,
		EndpointCooldown: cfg.EndpointCooldown, TCPSessions: cfg.HTTPSessions,
		LastReload: dm.reloadStatus, Proxy: dm.proxy,
	})

	if d.notify {
		dm.notifier = sdnotify.New(os.Getenv, d.clock, log)
	} else {
		dm.notifier = sdnotify.New(func(string) string { return "" }, d.clock, log)
	}
	defer p.Subscribe(func(*pool.Snapshot) { dm.notifier.Status(statusLine(p.Snapshots())) })()

	unixL, err := dm.listenUnix(d.notify)
	if err != nil {
		dm.api.Shutdown(context.Background())
		return err
	}
	var tcpL net.Listener
	if cfg.HTTPAddr != "" {
		if tcpL, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			unixL.Close()
			dm.api.Shutdown(context.Background())
			return fmt.Errorf("%s: %w", config.VarHTTPAddr, err)
		}
		dm.httpAddr = tcpL.Addr().String()
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveErr(dm.api.Serve(unixL, false)) })
	if tcpL != nil {
		g.Go(func() error { return serveErr(dm.api.Serve(tcpL, true)) })
	}
	log.Info().Str("version", version).Str("socket", unixL.Addr().String()).Str("httpAddr", dm.httpAddr).
		Int("credentials", len(cfg.Credentials)).Msg("serving")

	g.Go(func() error {
		if err := p.Open(gctx); err != nil {
			return nil // shutting down before the first round finished
		}
		dm.notifier.Status(statusLine(p.Snapshots()))
		dm.notifier.Ready()
		log.Info().Str("status", statusLine(p.Snapshots())).Msg("ready")
		if d.ready != nil {
			d.ready(dm)
		}
		return nil
	})
	g.Go(func() error { return dm.notifier.RunWatchdog(gctx, func() bool { return true }) })
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-d.hup:
				dm.reload(d.environ)
			}
		}
	})
	g.Go(func() error {
		<-gctx.Done()
		dm.notifier.Stopping()
		log.Info().Msg("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return dm.api.Shutdown(sctx)
	})
	err = g.Wait()
	if err != nil && ctx.Err() == nil {
		return err
	}
	log.Info().Msg("stopped")
	return nil
}

func serveErr(err error) error {
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// listenUnix takes the socket from systemd (socket activation) or makes it.
// An inherited socket is never removed; one made here is removed at shutdown.
func (dm *daemon) listenUnix(activation bool) (net.Listener, error) {
	if activation {
		ls, names, err := sdnotify.Listeners(true)
		if err != nil {
			return nil, fmt.Errorf("socket activation: %w", err)
		}
		// Pick closes the others; a listener made from an inherited fd is never unlinked.
		if l, name := sdnotify.Pick(ls, names, sdnotify.SocketName); l != nil {
			dm.log.Info().Str("name", name).Str("addr", l.Addr().String()).
				Msg("using the socket passed by systemd; SESSIOND_SOCKET and SESSIOND_SOCKET_MODE are ignored")
			return l, nil
		}
	}
	l, err := localapi.ListenUnix(dm.cfg.Socket, dm.cfg.SocketMode)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", config.VarSocket, err)
	}
	dm.socket = dm.cfg.Socket
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
	counts := map[pool.State][]string{}
	for _, s := range snaps {
		counts[s.State] = append(counts[s.State], s.Name)
	}
	states := make([]string, 0, len(counts))
	for st := range counts {
		states = append(states, string(st))
	}
	sort.Strings(states)
	parts := make([]string, 0, len(states))
	for _, st := range states {
		names := counts[pool.State(st)]
		parts = append(parts, fmt.Sprintf("%s: %s", st, strings.Join(names, ",")))
	}
	return fmt.Sprintf("%d credentials; %s", len(snaps), strings.Join(parts, "; "))
}

func (dm *daemon) reloadStatus() *localapi.ReloadStatus {
	dm.reloadMu.Lock()
	defer dm.reloadMu.Unlock()
	return dm.lastReload
}

// reload re-reads the env file and the _FILE secrets (SIGHUP). A
// configuration with problems is rejected and the old one keeps running.
func (dm *daemon) reload(environ []string) {
	dm.notifier.Reloading()
	defer dm.notifier.Ready()
	now := time.Now()
	cfg, err := config.Load(environ)
	if err != nil {
		var ve *config.ValidationError
		ev := dm.log.Error().Err(err)
		if errors.As(err, &ve) {
			probs := make([]string, len(ve.Problems))
			for i, p := range ve.Problems {
				probs[i] = p.String()
			}
			ev = dm.log.Error().Strs("problems", probs)
		}
		ev.Msg("reload rejected; the previous configuration keeps running")
		dm.setReload(&localapi.ReloadStatus{OK: false, Error: err.Error(), At: now})
		return
	}
	old := dm.cfg
	if cfg.Socket != old.Socket || cfg.SocketMode != old.SocketMode || cfg.HTTPAddr != old.HTTPAddr || cfg.HTTPSessions != old.HTTPSessions {
		dm.log.Warn().Msg("reload: socket, socket mode and HTTP listener settings take effect only after a restart")
	}
	for _, w := range cfg.Warnings {
		dm.log.Warn().Msg(w)
	}
	dm.level.setLevel(cfg.LogLevel)
	dm.sinks.SetTargets(sinkTargets(cfg))
	dm.pool.Update(cfg.Credentials)
	dm.pool.SecretsChanged()
	dm.cfg = cfg
	dm.setReload(&localapi.ReloadStatus{OK: true, At: now})
	names := make([]string, len(cfg.Credentials))
	for i, c := range cfg.Credentials {
		names[i] = c.Name
	}
	dm.log.Info().Strs("credentials", names).Msg("configuration reloaded")
}

func (dm *daemon) setReload(s *localapi.ReloadStatus) {
	dm.reloadMu.Lock()
	defer dm.reloadMu.Unlock()
	dm.lastReload = s
}

// levelWriter is the log sink whose level a reload can change.
type levelWriter struct {
	out   io.Writer
	mu    sync.RWMutex
	level zerolog.Level
}

func newLevelWriter(out io.Writer, format string) *levelWriter {
	if format == "console" {
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.RFC3339}
	}
	return &levelWriter{out: out, level: zerolog.InfoLevel}
}

func (w *levelWriter) setLevel(s string) {
	l, err := zerolog.ParseLevel(s)
	if err != nil || s == "" {
		l = zerolog.InfoLevel
	}
	w.mu.Lock()
	w.level = l
	w.mu.Unlock()
}

func (w *levelWriter) Write(p []byte) (int, error) { return w.out.Write(p) }

// Sample reports whether events at l are logged at the current level.
func (w *levelWriter) Sample(l zerolog.Level) bool {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return l >= w.level
}

// WriteLevel drops events below the current level.
func (w *levelWriter) WriteLevel(l zerolog.Level, p []byte) (int, error) {
	w.mu.RLock()
	min := w.level
	w.mu.RUnlock()
	if l < min {
		return len(p), nil
	}
	return w.out.Write(p)
}
