package password_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/client"
	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/localapi"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/password"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

// env is one fake Erply with the demo account, a password file for its
// manager, and every log line any part writes, at debug level.
type env struct {
	t                 *testing.T
	clk               *clock.Fake
	fake              *erplytest.Server
	code, user, pw    string
	pin               string
	dir               string // holds the password file
	pwFile            string
	logs              *logBuffer
	secretsNeverShown []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	clk := clock.NewFake(t0)
	fake := erplytest.New(clk)
	t.Cleanup(fake.Close)
	code, user, pw, pin := fake.SeedDemo()
	dir := shortDir(t)
	e := &env{t: t, clk: clk, fake: fake, code: code, user: user, pw: pw, pin: pin, dir: dir,
		pwFile: filepath.Join(dir, "manager.password"), logs: &logBuffer{}}
	if err := os.WriteFile(e.pwFile, []byte(pw+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	// The umask may have masked the mode: make it the one the test expects kept.
	if err := os.Chmod(e.pwFile, 0o640); err != nil {
		t.Fatal(err)
	}
	// The demo PIN (4 digits) is left out: it turns up by chance in key
	// fingerprints and durations; other packages test that PINs are never logged.
	e.secretsNeverShown = []string{pw}
	t.Cleanup(func() { e.checkLogs() })
	return e
}

// shortDir is a temporary directory with a short path, for Unix sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.Chmod(dir, 0o700) // a test may have made it read-only
		os.RemoveAll(dir)
	})
	return dir
}

// checkLogs fails the test if any log line shows the manager's first or
// current password, or another secret the test added.
func (e *env) checkLogs() {
	secrets := append([]string{e.fake.Password(e.code, e.user)}, e.secretsNeverShown...)
	for _, s := range secrets {
		if s != "" && strings.Contains(e.logs.String(), s) {
			e.t.Errorf("a log line shows a secret (%d characters)", len(s))
		}
	}
}

func (e *env) password(name string) config.Credential {
	return config.Credential{
		Name: name, Kind: config.KindPassword, ClientCode: e.code, APIURL: e.fake.APIURL(),
		Username: e.user, Password: config.Secret{File: e.pwFile, Var: "SESSIOND_" + strings.ToUpper(name) + "_PASSWORD"},
		SessionLength: 3600, RotatePassword: config.RotateNever,
	}
}

func (e *env) pinOn(name, parent string) config.Credential {
	return config.Credential{
		Name: name, Kind: config.KindPIN, ClientCode: e.code, APIURL: e.fake.APIURL(),
		Parent: parent, PIN: config.Secret{Value: e.pin, Var: "SESSIOND_" + strings.ToUpper(name) + "_PIN"},
		SessionLength: 3600,
	}
}

// fileContent is the password file's content without its newline.
func (e *env) fileContent() string {
	e.t.Helper()
	b, err := os.ReadFile(e.pwFile)
	if err != nil {
		e.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func (e *env) nextExists() bool {
	_, err := os.Lstat(e.pwFile + password.NextSuffix)
	return err == nil
}

// daemon is one process's worth of parts: pool, rotator and (optionally)
// the local API on a real socket, wired as the daemon wires them.
type daemon struct {
	e      *env
	reg    *prometheus.Registry
	up     *upstream.Client
	files  *password.Files
	pool   *pool.Pool
	rot    *password.Rotator
	api    *localapi.Server
	sock   string
	client *client.Client
	http   *http.Client
	served chan error
	once   sync.Once
}

type daemonOptions struct {
	creds  []config.Credential
	api    bool                                      // serve the local API on a socket
	wrapUp func(password.Upstream) password.Upstream // replaces the rotator's upstream
	wrapSS func(password.Sessions) password.Sessions // replaces the rotator's pool
	rotOpt func(*password.Options)                   // last changes to the rotator's options
	socket os.FileMode                               // socket mode (0660 when 0)
	seed   uint64                                    // refresh jitter seed
	tag    string                                    // names the process in log lines
}

func (e *env) start(o daemonOptions) *daemon {
	e.t.Helper()
	log := zerolog.New(io.MultiWriter(e.logs, zerolog.NewTestWriter(e.t))).Level(zerolog.DebugLevel).
		With().Str("process", o.tag).Logger()
	d := &daemon{e: e, reg: prometheus.NewRegistry()}
	d.up = upstream.New(upstream.Options{
		Logger: log, RetryMax: 2, RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond,
		RateLimitWait: time.Millisecond, Registerer: d.reg,
	})
	policy := refresher.Default()
	rng := rand.New(rand.NewPCG(o.seed, 7))
	var mu sync.Mutex
	policy.Float64 = func() float64 { mu.Lock(); defer mu.Unlock(); return rng.Float64() }
	d.files = password.NewFiles(log)
	p, err := pool.New(pool.Options{MethodFor: d.files.Methods(login.Methods(d.up)), Upstream: d.up,
		Credentials: o.creds, Clock: e.clk, Policy: policy, Logger: log, Registerer: d.reg})
	if err != nil {
		e.t.Fatal(err)
	}
	d.pool = p
	var ss password.Sessions = p
	if o.wrapSS != nil {
		ss = o.wrapSS(p)
	}
	var up password.Upstream = d.up
	if o.wrapUp != nil {
		up = o.wrapUp(d.up)
	}
	ropts := password.Options{Sessions: ss, Upstream: up, Files: d.files, Clock: e.clk, Logger: log, Registerer: d.reg}
	if o.rotOpt != nil {
		o.rotOpt(&ropts)
	}
	if d.rot, err = password.NewRotator(ropts); err != nil {
		p.Close()
		e.t.Fatal(err)
	}
	if o.api {
		d.api = localapi.New(localapi.Options{Sessions: p, Clock: e.clk, Logger: log, Registerer: d.reg, Gatherer: d.reg, Rotator: d.rot})
		sockDir := shortDir(e.t)
		d.sock = filepath.Join(sockDir, "s.sock")
		l, err := localapi.ListenUnix(d.sock, o.socket)
		if err != nil {
			e.t.Fatal(err)
		}
		d.served = make(chan error, 1)
		go func() { d.served <- d.api.Serve(l, false) }()
		d.client = client.New(d.sock)
		d.http = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.sock)
		}}}
	}
	e.t.Cleanup(d.close)
	return d
}

// close stops the process's parts in the daemon's order: API, rotator, pool.
func (d *daemon) close() {
	d.once.Do(func() {
		if d.api != nil {
			d.client.CloseIdleConnections()
			d.http.CloseIdleConnections()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := d.api.Shutdown(ctx); err != nil {
				d.e.t.Errorf("Shutdown: %v", err)
			}
			if err := <-d.served; err != nil {
				d.e.t.Errorf("Serve: %v", err)
			}
		}
		d.rot.Close()
		d.pool.Close()
		d.up.CloseIdleConnections()
	})
}

func (d *daemon) open() {
	d.e.t.Helper()
	if err := d.pool.Open(context.Background()); err != nil {
		d.e.t.Fatal(err)
	}
}

func (d *daemon) get(name string) *pool.Snapshot {
	d.e.t.Helper()
	s, err := d.pool.Get(context.Background(), name)
	if err != nil {
		d.e.t.Fatalf("%s: %v", name, err)
	}
	return s
}

// do sends a request to the daemon's socket and returns status and body.
func (d *daemon) do(method, path string) (int, string) {
	d.e.t.Helper()
	req, err := http.NewRequest(method, "http://sessiond"+path, nil)
	if err != nil {
		d.e.t.Fatal(err)
	}
	res, err := d.http.Do(req)
	if err != nil {
		d.e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		d.e.t.Fatal(err)
	}
	return res.StatusCode, string(b)
}

// waitFor returns the first snapshot of name that satisfies ok, published
// from now on or current already; it fails the test after 10 s.
func (d *daemon) waitFor(name string, ok func(*pool.Snapshot) bool) *pool.Snapshot {
	d.e.t.Helper()
	ch := make(chan *pool.Snapshot, 1)
	cancel := d.pool.Subscribe(func(s *pool.Snapshot) {
		if s.Name == name && ok(s) {
			select {
			case ch <- s:
			default:
			}
		}
	})
	defer cancel()
	if s, _ := d.pool.Snapshot(name); s != nil && ok(s) {
		return s
	}
	select {
	case s := <-ch:
		return s
	case <-time.After(10 * time.Second):
		d.e.t.Fatalf("%s: no snapshot as wanted within 10 s", name)
		return nil
	}
}

// logBuffer collects log lines from every goroutine.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// upstreamFunc adapts a function to password.Upstream.
type upstreamFunc func(ctx context.Context, acct upstream.Account, key, oldPW, newPW string, length int) (*upstream.Session, error)

func (f upstreamFunc) ChangePassword(ctx context.Context, acct upstream.Account, key, oldPW, newPW string, length int) (*upstream.Session, error) {
	return f(ctx, acct, key, oldPW, newPW, length)
}

// errLost stands for an answer lost on the way back (no Erply code).
var errLost = &upstream.Error{Request: "changePassword", Err: errors.New("connection reset by peer")}
