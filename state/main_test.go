package state

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var start = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

// env is a fake Erply on a fake clock, a state directory, and daemons
// (a pool with a Store) started and stopped on them as a restart would.
type env struct {
	t        *testing.T
	clk      *clock.Fake
	fake     *erplytest.Server
	client   *upstream.Client
	policy   refresher.Policy
	dir      string
	code     string
	user     string
	password string
	pin      string
	pwFile   string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	clk := clock.NewFake(start)
	fake := erplytest.New(clk)
	t.Cleanup(fake.Close)
	code, user, _, _ := fake.SeedDemo()
	// Secrets unique enough to grep for in the state file.
	pw, pin := "pw-Zebra-Quokka-4417-secret", "pin-Yak-9931-secret"
	acct := fake.AddAccount(code)
	acct.AddUser(erplytest.User{Username: user, Password: pw, UserID: 6, EmployeeID: 5, EmployeeName: "Maria Manager", GroupID: 1, GroupName: "Administrators"})
	acct.AddUser(erplytest.User{Username: "cashier@demo.example", PIN: pin, UserID: 7, EmployeeID: 8, EmployeeName: "Carl Cashier", GroupID: 3, GroupName: "Cashiers"})
	pwFile := filepath.Join(t.TempDir(), "manager.password")
	if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	client := upstream.New(upstream.Options{
		Logger:       zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		RetryMax:     1,
		RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond,
		RateLimitWait: time.Millisecond,
	})
	t.Cleanup(client.CloseIdleConnections)
	policy := refresher.Default()
	rng := rand.New(rand.NewPCG(1, 2))
	var mu sync.Mutex
	policy.Float64 = func() float64 { mu.Lock(); defer mu.Unlock(); return rng.Float64() }
	return &env{t: t, clk: clk, fake: fake, client: client, policy: policy, dir: filepath.Join(t.TempDir(), "state"),
		code: code, user: user, password: pw, pin: pin, pwFile: pwFile}
}

func (e *env) password1h(name string) config.Credential {
	return config.Credential{
		Name: name, Kind: config.KindPassword, ClientCode: e.code, APIURL: e.fake.APIURL(),
		Username: e.user, Password: config.Secret{File: e.pwFile, Var: "SESSIOND_" + name + "_PASSWORD"},
		SessionLength: 3600,
	}
}

func (e *env) pin1h(name, parent string) config.Credential {
	return config.Credential{
		Name: name, Kind: config.KindPIN, ClientCode: e.code, APIURL: e.fake.APIURL(),
		Parent: parent, PIN: config.Secret{Value: e.pin, Var: "SESSIOND_" + name + "_PIN"},
		SessionLength: 3600,
	}
}

// fakeUser is a password user of the fake's account.
func (e *env) fakeUser(username, password string) erplytest.User {
	return erplytest.User{Username: username, Password: password, UserID: 11, EmployeeID: 12, EmployeeName: "Other", GroupID: 1, GroupName: "Administrators"}
}

// daemon is one run of the daemon's session core: a pool, restored from
// and followed by a Store.
type daemon struct {
	e      *env
	reg    *prometheus.Registry
	store  *Store
	pool   *pool.Pool
	report Report
	stop   func()
	creds  []config.Credential
}

// start runs a daemon as the wiring does: Open the state directory,
// Restore into a new pool, Follow it, then the pool's first login round.
func (e *env) start(creds ...config.Credential) *daemon {
	e.t.Helper()
	d := &daemon{e: e, reg: prometheus.NewRegistry(), creds: creds}
	st, err := Open(e.dir, Options{Clock: e.clk, Logger: zerolog.New(zerolog.NewTestWriter(e.t)), Registerer: d.reg})
	if err != nil {
		e.t.Fatal(err)
	}
	p, err := pool.New(pool.Options{MethodFor: login.Methods(e.client),
		Upstream: e.client, Credentials: creds, Clock: e.clk, Policy: e.policy,
		Logger: zerolog.New(zerolog.NewTestWriter(e.t)).Level(zerolog.WarnLevel),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	d.store, d.pool = st, p
	e.t.Cleanup(d.shutdown)
	d.report = st.Restore(context.Background(), p, e.client, creds, e.policy)
	d.stop = st.Follow(p)
	if err := p.Open(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	return d
}

// shutdown stops the daemon as the wiring does: the Store (which writes the
// last change) before the pool.
func (d *daemon) shutdown() {
	if err := d.store.Close(); err != nil {
		d.e.t.Errorf("Store.Close: %v", err)
	}
	d.pool.Close()
}

// key returns the credential's current key, failing the test if there is
// no valid one or the fake does not know it as live.
func (d *daemon) key(name string) string {
	d.e.t.Helper()
	s, err := d.pool.Get(context.Background(), name)
	if err != nil {
		d.e.t.Fatalf("%s: Get at %s: %v", name, d.e.clk.Now().Format(time.TimeOnly), err)
	}
	if !d.e.fake.SessionValid(s.Session.SessionKey) {
		d.e.t.Fatalf("%s: Get at %s served a key the fake says is not valid", name, d.e.clk.Now().Format(time.TimeOnly))
	}
	return s.Session.SessionKey
}

// waitFor waits until the credential's snapshot satisfies ok, woken by the
// pool's own notifications (a pin's switch after its parent's new session
// runs in the background); it fails the test after 10 s of real time.
func (d *daemon) waitFor(name, what string, ok func(*pool.Snapshot) bool) {
	d.e.t.Helper()
	ch := make(chan struct{}, 1)
	cancel := d.pool.Subscribe(func(s *pool.Snapshot) {
		if s.Name == name {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	})
	defer cancel()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		if s, _ := d.pool.Snapshot(name); ok(s) {
			return
		}
		select {
		case <-ch:
		case <-timeout.C:
			d.e.t.Fatalf("%s: timed out waiting for %s", name, what)
		}
	}
}

// waitNewKey waits until the credential holds a valid key other than old.
func (d *daemon) waitNewKey(name, old string) {
	d.e.t.Helper()
	d.waitFor(name, "a new key", func(s *pool.Snapshot) bool {
		return s.Session != nil && s.Session.SessionKey != old && s.Valid(d.e.clk.Now(), d.pool.MarginOf(s))
	})
}

// unavailable asserts Get answers an *pool.UnavailableError and returns it.
func (d *daemon) unavailable(name string) *pool.UnavailableError {
	d.e.t.Helper()
	s, err := d.pool.Get(context.Background(), name)
	var ue *pool.UnavailableError
	if !errors.As(err, &ue) {
		d.e.t.Fatalf("%s: Get at %s = %v, %v; want an UnavailableError", name, d.e.clk.Now().Format(time.TimeOnly), s, err)
	}
	return ue
}

// outcome returns a credential's restore outcome.
func (d *daemon) outcome(name string) Outcome {
	d.e.t.Helper()
	o, ok := d.report.Outcome(name)
	if !ok {
		d.e.t.Fatalf("no restore outcome for %s in %+v", name, d.report)
	}
	return o
}

// logins counts the fake's login calls.
func (e *env) logins() (verify, switches int) {
	return e.fake.Calls("verifyUser"), e.fake.Calls("switchUser")
}

// readState decodes the state file as a next start would.
func (e *env) readState() (map[string]*record, []string) {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dir, FileName))
	if err != nil {
		e.t.Fatal(err)
	}
	return parse(b)
}
