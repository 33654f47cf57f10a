package daemon_test

import (
	"bytes"
	"context"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/erply-sessiond/erply-sessiond/client"
	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/internal/daemon"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// testDaemon is the real daemon (daemon.New, Run) running in-process against the fake
// Erply, on a Unix socket in a short temporary directory.
type testDaemon struct {
	t      *testing.T
	clk    *clock.Fake // nil when the daemon runs on the real clock
	fake   *erplytest.Server
	dir    string
	socket string
	env    map[string]string // the environment the daemon was started with
	code   string            // the demo account's client code
	user   string
	pw     string
	pin    string
	pwFile string

	logs   *syncBuffer
	reg    *prometheus.Registry // the daemon's metrics
	cancel context.CancelFunc
	done   chan error
	dm     *daemon.Daemon
	ready  chan struct{} // closed when the daemon says it is ready
	client *client.Client
	http   *http.Client
}

// daemonOptions adjust a test daemon before it starts.
type daemonOptions struct {
	realClock bool
	// env entries added to (or, with an empty value, removed from) the default environment.
	env map[string]string
	// noWait returns before the daemon is ready.
	noWait bool
	// upstream overrides the upstream client's retry settings.
	upstream *upstream.Options
	// setup, when set, runs after the fake is seeded and d.env is built (env
	// applied) and before the configuration is loaded: it may add users to
	// d.fake, write files in d.dir and change d.env.
	setup func(d *testDaemon)
	// wrapClock, when set, wraps the fake clock for the fake Erply and the
	// daemon (not d.clk, which stays the bare fake), e.g. to move the wall
	// clock without firing timers, as a suspended host sees it.
	wrapClock func(*clock.Fake) clock.Clock
	// restartOf, when set, starts the daemon again as a restart of that
	// one would: the same fake Erply, clock, directory and environment (env
	// then adds to it), with everything the previous daemon left on disk.
	// Stop the previous daemon first.
	restartOf *testDaemon
	// envWatch is the daemon's Options.EnvWatchInterval.
	envWatch time.Duration
	// tune, when set, adjusts the daemon's Options before New.
	tune func(*daemon.Options)
	// sibling, when set, starts another daemon beside that one, as on
	// another host of the same deployment: the same fake Erply, clock,
	// account, password file and environment (env then adds to it), its
	// own directory and socket.
	sibling *testDaemon
}

var testStart = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

// startDaemon starts the daemon with two credentials, "pos" (password from a
// file) and "cashier" (pin on top of pos), and waits until it is ready.
func startDaemon(t *testing.T, o daemonOptions) *testDaemon {
	t.Helper()
	var clk clock.Clock = clock.Real{}
	d := &testDaemon{t: t, logs: &syncBuffer{}, reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	if sib := o.sibling; sib != nil {
		dir, err := os.MkdirTemp("", "sd")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		d.dir, d.socket = dir, filepath.Join(dir, "s.sock")
		d.clk, d.fake = sib.clk, sib.fake
		d.code, d.user, d.pw, d.pin, d.pwFile = sib.code, sib.user, sib.pw, sib.pin, sib.pwFile
		d.env = maps.Clone(sib.env)
		d.env["SESSIOND_SOCKET"] = d.socket
		if d.clk != nil {
			clk = d.clk
		}
	} else if prev := o.restartOf; prev != nil {
		d.clk, d.fake, d.dir, d.socket = prev.clk, prev.fake, prev.dir, prev.socket
		d.code, d.user, d.pw, d.pin, d.pwFile = prev.code, prev.user, prev.pw, prev.pin, prev.pwFile
		d.env = maps.Clone(prev.env)
		if d.clk != nil {
			clk = d.clk
			if o.wrapClock != nil {
				clk = o.wrapClock(d.clk)
			}
		}
	} else {
		dir, err := os.MkdirTemp("", "sd")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		d.dir, d.socket = dir, filepath.Join(dir, "s.sock")
		if !o.realClock {
			d.clk = clock.NewFake(testStart)
			clk = d.clk
			if o.wrapClock != nil {
				clk = o.wrapClock(d.clk)
			}
		}
		d.fake = erplytest.New(clk)
		t.Cleanup(d.fake.Close)
		d.code, d.user, d.pw, d.pin = d.fake.SeedDemo()
		d.pwFile = filepath.Join(dir, "pos.password")
		if err := os.WriteFile(d.pwFile, []byte(d.pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		d.env = map[string]string{
			"SESSIOND_LOG_LEVEL":         "debug",
			"SESSIOND_CREDENTIALS":       "pos,cashier",
			"SESSIOND_SOCKET":            d.socket,
			"SESSIOND_API_URL":           d.fake.APIURL(),
			"SESSIOND_POS_CLIENT_CODE":   d.code,
			"SESSIOND_POS_USERNAME":      d.user,
			"SESSIOND_POS_PASSWORD_FILE": d.pwFile,
			"SESSIOND_CASHIER_KIND":      "pin",
			"SESSIOND_CASHIER_PARENT":    "pos",
			"SESSIOND_CASHIER_PIN":       d.pin,
		}
	}
	for k, v := range o.env {
		if v == "" {
			delete(d.env, k)
		} else {
			d.env[k] = v
		}
	}
	if o.setup != nil {
		o.setup(d)
	}
	environ := d.environ()
	cfg, err := config.Load(environ)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	up := upstream.Options{RetryMax: 2, RetryWaitMin: time.Millisecond, RetryWaitMax: 5 * time.Millisecond, RateLimitWait: 5 * time.Millisecond}
	if o.upstream != nil {
		up = *o.upstream
	}
	up.Clock = clk
	ready := make(chan struct{})
	d.ready = ready
	dopts := daemon.Options{Environ: environ, LogOutput: d.logs, Clock: clk, Upstream: up,
		Registry: d.reg, Version: "test", Ready: func() { close(ready) }, EnvWatchInterval: o.envWatch}
	if o.tune != nil {
		o.tune(&dopts)
	}
	d.dm, err = daemon.New(cfg, dopts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go func() { d.done <- d.dm.Run(ctx) }()
	t.Cleanup(func() { d.stop() })
	d.client = client.New(d.socket)
	t.Cleanup(d.client.CloseIdleConnections)
	d.http = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "unix", d.socket)
	}}}
	t.Cleanup(d.http.CloseIdleConnections)
	if o.noWait {
		return d
	}
	d.waitReady(t)
	return d
}

// waitReady returns once the daemon is ready (Options.Ready was called).
func (d *testDaemon) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-d.ready:
	case err := <-d.done:
		d.done <- err
		t.Fatalf("daemon exited before ready: %v\n%s", err, d.logs)
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon not ready after 20s\n%s", d.logs)
	}
}

func (d *testDaemon) environ() []string {
	out := make([]string, 0, len(d.env))
	for k, v := range d.env {
		out = append(out, k+"="+v)
	}
	return out
}

// stop cancels the daemon (as SIGTERM does) and returns Run's result.
func (d *testDaemon) stop() error {
	d.cancel()
	select {
	case err := <-d.done:
		d.done <- err
		return err
	case <-time.After(15 * time.Second):
		d.t.Fatalf("daemon did not stop within 15s\n%s", d.logs)
		return nil
	}
}

// do sends a request over the socket and returns status, headers and body.
func (d *testDaemon) do(method, path string, body io.Reader, hdr ...string) (int, http.Header, string) {
	d.t.Helper()
	req, err := http.NewRequest(method, "http://sessiond"+path, body)
	if err != nil {
		d.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := d.http.Do(req)
	if err != nil {
		d.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		d.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func (d *testDaemon) get(path string) (int, string) {
	d.t.Helper()
	code, _, body := d.do(http.MethodGet, path, nil)
	return code, body
}

func (d *testDaemon) post(path, form string) (int, http.Header, string) {
	d.t.Helper()
	return d.do(http.MethodPost, path, strings.NewReader(form))
}

// key returns the current key of a credential through the socket.
func (d *testDaemon) key(name string) string {
	d.t.Helper()
	k, err := d.client.Key(context.Background(), name)
	if err != nil {
		d.t.Fatalf("key %s: %v\n%s", name, err, d.logs)
	}
	return k
}

// syncBuffer is a bytes.Buffer safe for the daemon's concurrent log writes
// that wakes waiters at every write.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced at every write
	// event is closed and replaced at every line but the per-request one,
	// which a test's own reads cause.
	event chan struct{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
	if s.event != nil && !bytes.Contains(p, []byte(`"message":"request"`)) {
		close(s.event)
		s.event = nil
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// logged returns a channel closed at the next line the daemon logs that is
// not about a request.
func (s *syncBuffer) logged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.event == nil {
		s.event = make(chan struct{})
	}
	return s.event
}

// waitLine returns the first log line for which match holds, waiting for
// the daemon to write it; it fails after within.
func (s *syncBuffer) waitLine(t *testing.T, within time.Duration, what string, match func(line string) bool) string {
	t.Helper()
	timeout := time.NewTimer(within)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		lines := strings.Split(s.b.String(), "\n")
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		written := s.changed
		s.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l
			}
		}
		select {
		case <-written:
		case <-timeout.C:
			t.Fatalf("no log line with %s within %v\n%s", what, within, s)
		}
	}
}

// waitFor returns once cond holds; it fails after within. cond may read
// through the socket. It is checked again at every session change the pool
// publishes and at every line the daemon logs (but the per-request ones its
// reads cause): the local API takes a new session from its own subscription
// to the pool, which may run after this one, so a read right after the
// publish can still see the old one; a change is logged once every
// subscriber has it.
func (d *testDaemon) waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	published := make(chan struct{}, 1)
	defer d.dm.Subscribe(func(*pool.Snapshot) {
		select {
		case published <- struct{}{}:
		default:
		}
	})()
	timeout := time.NewTimer(within)
	defer timeout.Stop()
	for {
		logged := d.logs.logged()
		if cond() {
			return
		}
		select {
		case <-published:
		case <-logged:
		case <-timeout.C:
			t.Fatalf("no %s within %v\n%s", what, within, d.logs)
		}
	}
}
