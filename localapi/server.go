// Package localapi owns the daemon's local HTTP API: the routes on the Unix socket and the optional loopback TCP listener, their access checks, metrics and health endpoints.
package localapi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/srv"
)

// Sessions is what the API needs from the session pool; *pool.Pool satisfies it.
type Sessions interface {
	// Get returns a snapshot whose session is valid for at least the margin,
	// logging in if needed (may block up to ctx).
	Get(ctx context.Context, name string) (*pool.Snapshot, error)
	// Invalidate is compare-and-refresh: refresh only if staleKey is still
	// current; answers the current snapshot.
	Invalidate(ctx context.Context, name, staleKey string) (*pool.Snapshot, error)
	// Snapshots returns every credential's current snapshot, in config order,
	// without refreshing.
	Snapshots() []*pool.Snapshot
	// Subscribe calls f (synchronously, from the pool's goroutine; f must be
	// quick) with every new snapshot of any credential, including a final one
	// with Removed=true; cancel stops it.
	Subscribe(f func(*pool.Snapshot)) (cancel func())
	// MarginOf is the expiry margin of s: a pre-rendered key is served only
	// while now+MarginOf(s) is before its expiry, otherwise the request goes
	// to Get. Asking the pool keeps the API and the pool agreed on the margin
	// of short sessions.
	MarginOf(s *pool.Snapshot) time.Duration
}

// ReloadStatus is the outcome of the last configuration reload, shown in /readyz.
type ReloadStatus struct {
	OK    bool      `json:"ok"`
	Error string    `json:"error"`
	At    time.Time `json:"at"`
}

// Limits and timeouts of the HTTP servers.
const (
	// MaxBodyBytes is the largest request body accepted (413 body_too_large beyond it).
	MaxBodyBytes = 64 << 10
	// MaxProxyBodyBytes is the outer limit on bodies of the proxy route; the
	// proxy applies its own (smaller or equal) limit inside it.
	MaxProxyBodyBytes = 1 << 20
	// MaxHeaderBytes caps the request line and headers.
	MaxHeaderBytes = 16 << 10
	// LoginWait bounds how long a request waits for a login in flight.
	LoginWait = 30 * time.Second
	// DefaultMaxConnsPerUID is how many connections one peer uid may hold
	// open on the Unix socket (all TCP connections share one such quota)
	// when Options.MaxConnsPerUID is zero: many more than a busy PHP-FPM
	// pool keeps alive, few enough that no one user can take the daemon's
	// file descriptors (the unit's LimitNOFILE) or memory.
	DefaultMaxConnsPerUID = 256
	// DefaultIdleTimeout closes a keep-alive connection idle this long when
	// Options.IdleTimeout is zero; a connection that never sends a request
	// is closed after 5 s (the header timeout).
	DefaultIdleTimeout = 30 * time.Second
	// DefaultEndpointCooldown is how long an endpoint reported down stays last
	// when Options.EndpointCooldown is zero.
	DefaultEndpointCooldown = 30 * time.Second
	// RequestHeader is the header every session route on the TCP listener
	// requires, with the value "1", so that a request forged through another
	// local web application (SSRF) cannot read keys.
	RequestHeader = "X-Sessiond-Request"
)

// Options configures a Server. Only Sessions is required.
type Options struct {
	Sessions Sessions
	// Clock defaults to clock.Real.
	Clock clock.Clock
	// Logger receives a debug line per request (route, status, duration, peer)
	// and warnings from net/http; the caller labels it (component=localapi).
	// The zero value logs nothing.
	Logger zerolog.Logger
	// Registerer receives the API's metrics; Gatherer is what /metrics serves.
	// main passes one private *prometheus.Registry as both. When both are nil a
	// private registry is made; when only Gatherer is nil and Registerer is
	// also a Gatherer, it is used for both.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// EndpointCooldown is how long an endpoint reported down is ordered last
	// (DefaultEndpointCooldown when zero).
	EndpointCooldown time.Duration
	// Intn is the randomness for endpoint ordering, with the contract of
	// rand.IntN; nil means math/rand/v2.
	Intn func(int) int
	// TCPSessions serves the session routes on TCP listeners too; each such
	// request must then name a loopback Host (403 forbidden_host otherwise,
	// against DNS rebinding) and carry RequestHeader: 1 (412 without it).
	// A credential with ALLOW_UIDS or ALLOW_GIDS is never served on TCP,
	// which has no peer credentials (403). When false they answer 404 on TCP.
	TCPSessions bool
	// LastReload, when set, reports the last reload for /readyz.
	LastReload func() *ReloadStatus
	// PeerCred, when set, replaces reading SO_PEERCRED from Unix connections
	// (for tests). ok=false means the peer is unknown.
	PeerCred func(net.Conn) (uid, gid, pid uint32, ok bool)
	// MaxConnsPerUID caps the connections one peer uid holds open on the
	// Unix socket, from its peer credentials; all TCP connections share one
	// such quota. A connection over it is answered 503 too_many_connections
	// and closed, so one user's idle or slow connections never stop another
	// user's requests. Default DefaultMaxConnsPerUID.
	MaxConnsPerUID int
	// IdleTimeout closes keep-alive connections idle this long (default
	// DefaultIdleTimeout).
	IdleTimeout time.Duration
	// SinkError, when set, says why a credential's SINK_FILE does not hold
	// its current key (nil when it does, or it has none); GET /v1/sessions
	// shows it as sinkError.
	SinkError func(credential string) error
	// Proxy, when set, is mounted at POST /v1/sessions/{name}/api behind the
	// same checks as the other session routes (name, access, TCP header);
	// when nil that route does not exist.
	Proxy http.Handler
	// Rotator, when set, serves POST /v1/sessions/{name}/rotate-password
	// on the Unix socket to callers of uid 0 or the daemon's own uid (403
	// for others, 404 on TCP); when nil that route does not exist.
	Rotator Rotator
	// FleetStatus, when set, gives each credential's part in fleet mode
	// ("off", "shared", "local") and why it is local, for /v1/sessions.
	FleetStatus func(name string) (mode, reason string)
}

// Rotator changes a password credential's password with Erply's
// changePassword and returns the snapshot holding the new session;
// *password.Rotator implements it. Its errors are answered as
// internal/answer maps them (an *answer.Error as it is).
type Rotator interface {
	Rotate(ctx context.Context, name string) (*pool.Snapshot, error)
}

// Server serves the local API on any number of listeners. Its methods are
// safe for concurrent use. Make one with New and always call Shutdown, which
// also ends its subscription to the pool.
type Server struct {
	sessions    Sessions
	clk         clock.Clock
	log         zerolog.Logger
	intn        func(int) int
	tcpSessions bool
	lastReload  func() *ReloadStatus
	peerCred    func(net.Conn) connInfo
	proxy       http.Handler
	rotator     Rotator
	fleetStatus func(string) (string, string)
	sinkError   func(string) error
	gatherer    prometheus.Gatherer
	selfUID     uint32
	idleTimeout time.Duration
	conns       connLimits

	cache     cache
	downs     *srv.Downs
	metrics   *metrics
	unmatched *routeCounters
	mux       *http.ServeMux
	handler   http.Handler

	mu      sync.Mutex
	closed  bool
	servers []*http.Server
	unsub   func()
}

// New returns a Server answering from opts.Sessions. It subscribes to the
// pool at once, so pre-rendered answers are current before the first request.
// It registers the API's metrics on opts.Registerer and panics if they are
// already registered there (a wiring mistake, as with prometheus.MustRegister).
func New(opts Options) *Server {
	if opts.Sessions == nil {
		panic("localapi: Options.Sessions is nil")
	}
	s := &Server{
		sessions:    opts.Sessions,
		clk:         opts.Clock,
		log:         opts.Logger,
		intn:        opts.Intn,
		tcpSessions: opts.TCPSessions,
		lastReload:  opts.LastReload,
		proxy:       opts.Proxy,
		rotator:     opts.Rotator,
		fleetStatus: opts.FleetStatus,
		sinkError:   opts.SinkError,
		selfUID:     uint32(os.Getuid()),
		idleTimeout: opts.IdleTimeout,
		conns:       connLimits{max: opts.MaxConnsPerUID, open: map[string]int{}, capped: map[string]bool{}},
	}
	if s.idleTimeout <= 0 {
		s.idleTimeout = DefaultIdleTimeout
	}
	if s.conns.max <= 0 {
		s.conns.max = DefaultMaxConnsPerUID
	}
	if s.clk == nil {
		s.clk = clock.Real{}
	}
	if opts.PeerCred != nil {
		f := opts.PeerCred
		s.peerCred = func(c net.Conn) connInfo {
			uid, gid, pid, ok := f(c)
			return connInfo{ok: ok, uid: uid, gid: gid, pid: pid}
		}
	} else {
		s.peerCred = readPeerCred
	}
	cooldown := opts.EndpointCooldown
	if cooldown == 0 {
		cooldown = DefaultEndpointCooldown
	}
	s.downs = srv.NewDowns(s.clk, cooldown)

	reg, gat := opts.Registerer, opts.Gatherer
	if reg == nil && gat == nil {
		r := prometheus.NewRegistry()
		reg, gat = r, r
	}
	if gat == nil {
		if g, ok := reg.(prometheus.Gatherer); ok {
			gat = g
		} else {
			gat = prometheus.NewRegistry()
		}
	}
	s.gatherer = gat
	s.metrics = newMetrics(s.sessions, s.clk.Now)
	if reg != nil {
		reg.MustRegister(s.metrics.requests, s.metrics.connsRefused, s.metrics.expiry, s.metrics.passwordExpired)
	}

	s.cache.init(s.render)
	s.unsub = s.sessions.Subscribe(s.onSnapshot)
	s.cache.seed(s.sessions.Snapshots())

	s.routes()
	s.handler = http.HandlerFunc(s.serveHTTP)
	return s
}

// ListenUnix makes the Unix socket at path with the given permission bits
// (0660 when mode is 0). A stale socket left by a crashed daemon is removed
// first; a socket on which some process still accepts connections, or a path
// that is not a socket at all, is refused with an error naming the path.
//
// Closing the listener (Shutdown closes it) removes path, but only while
// path is still the socket this call made: its device and inode are noted
// at creation and checked with Lstat first, so a daemon stopping never
// removes the socket of another daemon started on the same path since.
// Go's own unlink-on-close, which removes whatever path names, is off. A
// listener inherited from systemd (net.FileListener) is never unlinked.
//
// Between the socket's creation and the chmod it carries the umask's mode;
// keep it in a directory only the daemon's user and group can enter.
func ListenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if mode == 0 {
		mode = 0o660
	}
	fi, err := os.Lstat(path)
	switch {
	case err == nil:
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("localapi: %s exists and is not a socket; refusing to replace it", path)
		}
		if err := probeStale(path); err != nil {
			return nil, err
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("localapi: removing stale socket: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("localapi: %w", err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("localapi: %w", err)
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(path, mode.Perm()); err != nil {
		l.Close()
		os.Remove(path)
		return nil, fmt.Errorf("localapi: setting socket mode: %w", err)
	}
	fi, err = os.Lstat(path)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("localapi: %w", err)
	}
	return &ownSocket{UnixListener: l, path: path, made: fi}, nil
}

// ownSocket is a Unix listener that removes its socket file when closed,
// if the file is still the one it made.
type ownSocket struct {
	*net.UnixListener
	path string
	made fs.FileInfo // the socket as created, for os.SameFile
	once sync.Once
}

// Close stops listening and removes the socket file unless another has
// taken its place (same device and inode, checked with Lstat).
func (l *ownSocket) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, lerr := os.Lstat(l.path); lerr == nil && os.SameFile(fi, l.made) {
			os.Remove(l.path)
		}
	})
	return err
}

// probeStale returns nil when nobody accepts connections on the socket at
// path (connection refused), so it may be removed.
func probeStale(path string) error {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("localapi: %s: another process is serving on this socket", path)
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("localapi: %s exists and cannot be checked, not replacing it: %w", path, err)
}

// Serve answers requests on l until Shutdown, then returns nil (any other
// error is the listener's). tcp applies the TCP rules: no peer credentials,
// session routes only with Options.TCPSessions and RequestHeader. Serve
// closes l when it returns.
func (s *Server) Serve(l net.Listener, tcp bool) error {
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		// Invalidate may wait up to LoginWait for a login; the proxy may then
		// wait for Erply's answer too (its own request timeout is 90 s).
		WriteTimeout:   150 * time.Second,
		IdleTimeout:    s.idleTimeout,
		MaxHeaderBytes: MaxHeaderBytes,
		ErrorLog:       log.New(httpLogWriter{s.log}, "", 0),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			ci := connInfo{tcp: true} // unknown: the most restricted case
			if lc, ok := c.(*limitedConn); ok {
				ci = lc.ci // read once, at accept
			}
			return context.WithValue(ctx, connKey{}, &ci)
		},
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.servers = append(s.servers, hs)
	s.mu.Unlock()
	if err := hs.Serve(&limitedListener{Listener: l, s: s, tcp: tcp}); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("localapi: serve: %w", err)
	}
	return nil
}

// Shutdown stops accepting, waits for requests in flight until ctx ends,
// then closes every connection and listener (removing a socket made by
// ListenUnix) and ends the pool subscription. It returns ctx's error if
// requests were still running when it ended.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	servers := s.servers
	s.servers = nil
	unsub := s.unsub
	s.unsub = nil
	s.mu.Unlock()
	if unsub != nil {
		unsub()
	}

	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, hs := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = hs.Shutdown(ctx)
			if err := hs.Close(); err != nil && errs[i] == nil {
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("localapi: shutdown: %w", err)
	}
	return nil
}

// httpLogWriter turns net/http's own log lines into warnings.
type httpLogWriter struct{ log zerolog.Logger }

func (w httpLogWriter) Write(p []byte) (int, error) {
	w.log.Warn().Str("source", "net/http").Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
