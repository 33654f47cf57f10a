package fleet_test

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/fleet"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/password"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

var start = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

// backend is a Redis the daemons of a test share.
type backend struct {
	name string
	url  string
	mr   *miniredis.Miniredis // the in-process one
	srv  *redisServer         // a real redis-server process
}

// backendKind makes a backend inside the (sub)test that uses it.
type backendKind struct {
	name string
	make func(t *testing.T) *backend
}

// backends is miniredis always, and a real redis-server when installed
// (said loudly when it is not).
func backends(t *testing.T) []backendKind {
	t.Helper()
	out := []backendKind{{"miniredis", miniBackend}}
	if _, err := exec.LookPath("redis-server"); err == nil {
		out = append(out, backendKind{"redis-server", realBackend})
	} else {
		t.Log("WARNING: redis-server not installed: the real-Redis variant is SKIPPED (apt-get install redis-server)")
	}
	return out
}

func miniBackend(t *testing.T) *backend {
	t.Helper()
	mr := miniredis.RunT(t)
	return &backend{name: "miniredis", url: "redis://" + mr.Addr(), mr: mr}
}

func realBackend(t *testing.T) *backend {
	t.Helper()
	srv := startRedis(t)
	return &backend{name: "redis-server", url: "unix://" + srv.sock, srv: srv}
}

// needRedis skips a test loudly when redis-server is missing.
func needRedis(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("WARNING: SKIPPED: redis-server is not installed (apt-get install redis-server); this test needs a real Redis process")
	}
}

// client is a plain Redis client for a test's own inspection.
func (b *backend) client(t *testing.T) *redis.Client {
	t.Helper()
	o, err := redis.ParseURL(b.url)
	if err != nil {
		t.Fatal(err)
	}
	o.Protocol = 2
	o.DisableIdentity = true
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

// redisServer is a redis-server process on a Unix socket in a temporary
// directory, without persistence: a restart starts empty.
type redisServer struct {
	t    *testing.T
	dir  string
	sock string
	cmd  *exec.Cmd
	done chan struct{}
}

func startRedis(t *testing.T) *redisServer {
	t.Helper()
	needRedis(t)
	dir, err := os.MkdirTemp("", "rds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &redisServer{t: t, dir: dir, sock: filepath.Join(dir, "r.sock")}
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *redisServer) start() {
	s.t.Helper()
	os.Remove(s.sock)
	s.cmd = exec.Command("redis-server", "--port", "0", "--unixsocket", s.sock, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--loglevel", "warning",
		"--logfile", filepath.Join(s.dir, "redis.log"))
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan struct{})
	s.done = done
	cmd := s.cmd
	go func() { _ = cmd.Wait(); close(done) }()
	// Wait until it answers PING on the socket.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("unix", s.sock)
		if err == nil {
			_, _ = c.Write([]byte("PING\r\n"))
			buf := make([]byte, 7)
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := c.Read(buf)
			c.Close()
			if strings.HasPrefix(string(buf[:n]), "+PONG") {
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server did not answer on %s: %s", s.sock, s.log())
		}
		select {
		case <-done:
			s.t.Fatalf("redis-server exited at start: %s", s.log())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (s *redisServer) log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return string(b)
}

func (s *redisServer) signal(sig syscall.Signal) {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
}

// kill SIGKILLs the server and waits for it to be gone.
func (s *redisServer) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT)
	_ = s.cmd.Process.Kill()
	<-s.done
}

// keyringFile writes a keyring of n fresh keys and returns its path.
func keyringFile(t *testing.T, ids ...string) string {
	t.Helper()
	var sb strings.Builder
	for _, id := range ids {
		b := make([]byte, 32)
		_, _ = crand.Read(b)
		fmt.Fprintf(&sb, "%s %s\n", id, base64.StdEncoding.EncodeToString(b))
	}
	p := filepath.Join(t.TempDir(), "fleet.keys")
	if err := os.WriteFile(p, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// world is one fake Erply and one Redis that the daemons of a test share.
// Each daemon has its own fake clock; advance moves Erply's first and then
// every daemon's at once, so that their timers fire concurrently, as on
// separate hosts.
type world struct {
	t        *testing.T
	be       *backend
	erplyClk *clock.Fake
	fake     *erplytest.Server
	code     string
	user     string
	password string
	pin      string
	pwFile   string
	keyFile  string
	lockTTL  time.Duration
	seed     uint64

	mu      sync.Mutex
	daemons []*daemon
	logins  []loginEvent // every inner login of every daemon, in real time
}

type loginEvent struct {
	daemon int
	name   string
	at     time.Time
}

func newWorld(t *testing.T, be *backend) *world {
	t.Helper()
	clk := clock.NewFake(start)
	fake := erplytest.New(clk)
	t.Cleanup(fake.Close)
	code, user, pw, pin := fake.SeedDemo()
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &world{t: t, be: be, erplyClk: clk, fake: fake, code: code, user: user, password: pw, pin: pin,
		pwFile: pwFile, keyFile: keyringFile(t, "k1"), lockTTL: 2 * time.Second}
}

func (w *world) pwCred(name string, length int) config.Credential {
	return config.Credential{
		Name: name, Kind: config.KindPassword, ClientCode: w.code, APIURL: w.fake.APIURL(),
		Username: w.user, Password: config.Secret{File: w.pwFile, Var: "SESSIOND_" + strings.ToUpper(name) + "_PASSWORD"},
		SessionLength: length,
	}
}

func (w *world) pinCred(name, parent string, length int) config.Credential {
	return config.Credential{
		Name: name, Kind: config.KindPIN, ClientCode: w.code, APIURL: w.fake.APIURL(),
		Parent: parent, PIN: config.Secret{Value: w.pin, Var: "SESSIOND_" + strings.ToUpper(name) + "_PIN"},
		SessionLength: length,
	}
}

// daemon stands in for one erply-sessiond: its own clock, upstream client,
// pool and fleet.
type daemon struct {
	i     int
	clk   *clock.Fake
	up    *upstream.Client
	pool  *pool.Pool
	fleet *fleet.Fleet
	reg   *prometheus.Registry
	log   zerolog.Logger
	files *password.Files // the password files' locks, as the daemon wires them
}

type daemonOpt func(*fleet.Options)

func withKeyFile(p string) daemonOpt { return func(o *fleet.Options) { o.Config.KeyFile = p } }

func withURL(u string) daemonOpt { return func(o *fleet.Options) { o.Config.RedisURL.Value = u } }

// start builds a daemon over creds; it is not opened.
func (w *world) start(creds []config.Credential, opts ...daemonOpt) *daemon {
	w.t.Helper()
	w.mu.Lock()
	i := len(w.daemons)
	w.seed++
	seed := w.seed
	w.mu.Unlock()
	clk := clock.NewFake(w.erplyClk.Now())
	log := zerolog.New(zerolog.NewTestWriter(w.t)).Level(testLogLevel()).With().Int("daemon", i).Logger()
	up := upstream.New(upstream.Options{
		Logger: log, RetryMax: -1, RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond,
		RateLimitWait: time.Millisecond, Clock: clk,
	})
	policy := refresher.Default()
	rng := rand.New(rand.NewPCG(seed, 7))
	var rmu sync.Mutex
	policy.Float64 = func() float64 { rmu.Lock(); defer rmu.Unlock(); return rng.Float64() }
	reg := prometheus.NewRegistry()
	fo := fleet.Options{
		Config: config.Fleet{
			RedisURL: config.Secret{Value: w.be.url, Var: config.VarFleetRedisURL},
			Name:     "test", KeyFile: w.keyFile, LockTTL: w.lockTTL,
		},
		Clock: clk, Policy: policy, Logger: log, Registerer: reg,
		Timeout: 200 * time.Millisecond, BreakerCooldown: 150 * time.Millisecond,
		PollInterval: 150 * time.Millisecond, FallbackSpread: 400 * time.Millisecond,
		Float64: rand.New(rand.NewPCG(seed, 11)).Float64,
	}
	for _, o := range opts {
		o(&fo)
	}
	f, err := fleet.New(fo)
	if err != nil {
		w.t.Fatal(err)
	}
	files := password.NewFiles(log)
	methods := files.Methods(login.Methods(up))
	counted := func(c config.Credential) pool.Method {
		m := methods(c)
		return countingMethod{w: w, i: i, inner: m}
	}
	p, err := pool.New(pool.Options{
		MethodFor: f.Methods(counted), Upstream: up, Credentials: creds, Clock: clk,
		Policy: policy, Logger: log, Registerer: reg, Renewer: f, LoginTimeout: 10 * time.Second,
	})
	if err != nil {
		w.t.Fatal(err)
	}
	if err := f.Open(p); err != nil {
		w.t.Fatal(err)
	}
	d := &daemon{i: i, clk: clk, up: up, pool: p, fleet: f, reg: reg, log: log, files: files}
	w.t.Cleanup(d.close)
	w.mu.Lock()
	w.daemons = append(w.daemons, d)
	w.mu.Unlock()
	return d
}

func (d *daemon) close() {
	d.pool.Close()
	if d.fleet != nil {
		d.fleet.Close()
	}
	d.up.CloseIdleConnections()
}

// startAlone builds a daemon without fleet mode (the baseline a fleet is
// compared with); it shares the world's clocks.
func (w *world) startAlone(creds []config.Credential) *daemon {
	w.t.Helper()
	w.mu.Lock()
	i := len(w.daemons)
	w.mu.Unlock()
	clk := clock.NewFake(w.erplyClk.Now())
	log := zerolog.New(zerolog.NewTestWriter(w.t)).Level(zerolog.WarnLevel).With().Int("daemon", i).Logger()
	up := upstream.New(upstream.Options{Logger: log, RetryMax: -1, Clock: clk})
	policy := refresher.Default()
	policy.Float64 = rand.New(rand.NewPCG(99, 7)).Float64
	p, err := pool.New(pool.Options{MethodFor: login.Methods(up), Upstream: up, Credentials: creds, Clock: clk, Policy: policy, Logger: log})
	if err != nil {
		w.t.Fatal(err)
	}
	d := &daemon{i: i, clk: clk, up: up, pool: p, reg: prometheus.NewRegistry()}
	w.t.Cleanup(d.close)
	w.mu.Lock()
	w.daemons = append(w.daemons, d)
	w.mu.Unlock()
	return d
}

// writeFile writes content to a new file and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testLogLevel is warn, or FLEET_TEST_LOG (debug, info) to follow a run.
func testLogLevel() zerolog.Level {
	if l, err := zerolog.ParseLevel(os.Getenv("FLEET_TEST_LOG")); err == nil && l != zerolog.NoLevel {
		return l
	}
	return zerolog.WarnLevel
}

// countingMethod records every real login (the credential's own method).
type countingMethod struct {
	w     *world
	i     int
	inner pool.Method
}

func (m countingMethod) Login(ctx context.Context, c config.Credential, s pool.Sessions) (pool.Grant, error) {
	m.w.mu.Lock()
	m.w.logins = append(m.w.logins, loginEvent{daemon: m.i, name: c.Name, at: time.Now()})
	m.w.mu.Unlock()
	return m.inner.Login(ctx, c, s)
}

func (w *world) loginEvents() []loginEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]loginEvent(nil), w.logins...)
}

// openAll opens every given daemon at once and waits for all.
func (w *world) openAll(ds ...*daemon) {
	w.t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(ds))
	for i, d := range ds {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = d.pool.Open(context.Background()) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			w.t.Fatal(err)
		}
	}
}

// advance moves time by d in steps of step: Erply's clock first, then
// every daemon's concurrently; after each step check runs.
func (w *world) advance(d, step time.Duration, check func()) {
	w.t.Helper()
	for done := time.Duration(0); done < d; done += step {
		s := min(step, d-done)
		w.erplyClk.Advance(s)
		var wg sync.WaitGroup
		w.mu.Lock()
		ds := append([]*daemon(nil), w.daemons...)
		w.mu.Unlock()
		for _, dm := range ds {
			wg.Add(1)
			go func() { defer wg.Done(); dm.clk.Advance(s) }()
		}
		wg.Wait()
		if check != nil {
			check()
		}
	}
}

// key is the key a daemon serves for name now ("" when none).
func (d *daemon) key(name string) string {
	s, ok := d.pool.Snapshot(name)
	if !ok || s.Session == nil {
		return ""
	}
	return s.Session.SessionKey
}

// mustServe asserts that d answers for name with a key Erply accepts and
// that is valid past the margin on d's clock: no expired key, no 503.
func (w *world) mustServe(d *daemon, name string) string {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := d.pool.Get(ctx, name)
	if err != nil {
		w.t.Fatalf("daemon %d at %s: %s unavailable: %v", d.i, d.clk.Now().Format("15:04:05.000"), name, err)
	}
	if !w.fake.SessionValid(s.Session.SessionKey) {
		w.t.Fatalf("daemon %d at %s: served %s's key %s, which Erply says is not valid", d.i, d.clk.Now().Format("15:04:05.000"), name, pool.Fingerprint(s.Session.SessionKey))
	}
	if !s.Valid(d.clk.Now(), d.pool.MarginOf(s)) {
		w.t.Fatalf("daemon %d served a key inside its margin", d.i)
	}
	return s.Session.SessionKey
}

// converge waits (real time, woken by every snapshot change) until every
// daemon in ds serves the same key for name, and returns how long it took.
func (w *world) converge(name string, within time.Duration, ds ...*daemon) (string, time.Duration) {
	w.t.Helper()
	return w.convergeAway(name, "", within, ds...)
}

// convergeAway is converge on a key other than old.
func (w *world) convergeAway(name, old string, within time.Duration, ds ...*daemon) (string, time.Duration) {
	w.t.Helper()
	changed := make(chan struct{}, 1)
	for _, d := range ds {
		cancel := d.pool.Subscribe(func(*pool.Snapshot) {
			select {
			case changed <- struct{}{}:
			default:
			}
		})
		defer cancel()
	}
	began := time.Now()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		k := ds[0].key(name)
		same := k != "" && k != old
		for _, d := range ds[1:] {
			same = same && d.key(name) == k
		}
		if same {
			return k, time.Since(began)
		}
		select {
		case <-changed:
		case <-timer.C:
			keys := make([]string, len(ds))
			for i, d := range ds {
				keys[i] = pool.Fingerprint(d.key(name))
			}
			w.t.Fatalf("%s: daemons still serve different keys after %s: %v", name, within, keys)
		}
	}
}

// fleetMetric returns the daemon's series of a per-credential fleet metric for pos.
func (d *daemon) fleetMetric(t *testing.T, name string) prometheus.Collector {
	t.Helper()
	mfs, err := d.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			if m.GetCounter() != nil {
				sum += m.GetCounter().GetValue()
			}
			if m.GetGauge() != nil {
				sum += m.GetGauge().GetValue()
			}
		}
		g.Set(sum)
	}
	return g
}

func erplyUser(name, password string, id int) erplytest.User {
	return erplytest.User{Username: name, Password: password, UserID: id, EmployeeID: 5, GroupID: 1}
}

func erplyCashier(pin string) erplytest.User {
	return erplytest.User{Username: "cashier@demo.example", PIN: pin, UserID: 7, EmployeeID: 8, GroupID: 3}
}

// dumpRedis appends every key, its type, TTL and value to w.
func dumpRedis(t *testing.T, rdb *redis.Client, w io.Writer) {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		typ, _ := rdb.Type(ctx, k).Result()
		ttl, _ := rdb.PTTL(ctx, k).Result()
		fmt.Fprintf(w, "%s %s %s ", k, typ, ttl)
		switch typ {
		case "hash":
			m, _ := rdb.HGetAll(ctx, k).Result()
			for f, v := range m {
				fmt.Fprintf(w, "%s=%s ", f, v)
			}
		case "string":
			v, _ := rdb.Get(ctx, k).Result()
			fmt.Fprint(w, v)
		default:
			fmt.Fprint(w, "(unexpected type)")
		}
		fmt.Fprintln(w)
	}
}
