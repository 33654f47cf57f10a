package pool_test

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
	"github.com/prometheus/client_golang/prometheus/testutil"
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

// env is a pool over the fake Erply on a fake clock.
type env struct {
	t        *testing.T
	clk      *clock.Fake
	fake     *erplytest.Server
	code     string
	user     string
	password string
	pin      string
	pwFile   string
	reg      *prometheus.Registry
	pool     *pool.Pool
}

var start = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

func newEnv(t *testing.T) *env {
	t.Helper()
	clk := clock.NewFake(start)
	fake := erplytest.New(clk)
	t.Cleanup(fake.Close)
	code, user, pw, pin := fake.SeedDemo()
	pwFile := filepath.Join(t.TempDir(), "manager.password")
	if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, clk: clk, fake: fake, code: code, user: user, password: pw, pin: pin, pwFile: pwFile, reg: prometheus.NewRegistry()}
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

func (e *env) start(creds ...config.Credential) *pool.Pool {
	e.t.Helper()
	client := upstream.New(upstream.Options{
		Logger:       zerolog.New(zerolog.NewTestWriter(e.t)).Level(zerolog.WarnLevel),
		RetryMax:     2,
		RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond,
		RateLimitWait: time.Millisecond,
	})
	policy := refresher.Default()
	rng := rand.New(rand.NewPCG(1, 2))
	var mu sync.Mutex
	policy.Float64 = func() float64 { mu.Lock(); defer mu.Unlock(); return rng.Float64() }
	p, err := pool.New(pool.Options{MethodFor: login.Methods(client),
		Upstream: client, Credentials: creds, Clock: e.clk, Policy: policy,
		Logger:     zerolog.New(zerolog.NewTestWriter(e.t)).Level(zerolog.WarnLevel),
		Registerer: e.reg,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { p.Close(); client.CloseIdleConnections() })
	e.pool = p
	return p
}

func (e *env) open() {
	e.t.Helper()
	if err := e.pool.Open(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) get(name string) *pool.Snapshot {
	e.t.Helper()
	s, err := e.pool.Get(context.Background(), name)
	if err != nil {
		e.t.Fatalf("%s: Get at %s: %v", name, e.clk.Now().Format(time.TimeOnly), err)
	}
	if !e.fake.SessionValid(s.Session.SessionKey) {
		e.t.Fatalf("%s: Get at %s returned a key the fake says is not valid (expires %s)", name, e.clk.Now().Format(time.TimeOnly), s.ExpiresAt.Format(time.TimeOnly))
	}
	return s
}

// settle waits until background logins (pin followers, reloads) started by
// the last step have finished, so call counts are stable.
func (e *env) settle(...string) { e.pool.WaitBackground() }

func TestDayOfRefreshes(t *testing.T) {
	e := newEnv(t)
	e.start(e.password1h("pos"), e.pin1h("cashier", "pos"))
	e.open()
	for minute := 0; minute < 24*60; minute++ {
		e.clk.Advance(time.Minute)
		e.settle("pos", "cashier")
		e.get("pos")
		e.get("cashier")
	}
	logins := e.fake.CallsFor(e.code, "verifyUser")
	switches := e.fake.CallsFor(e.code, "switchUser")
	t.Logf("24 h with 1 h sessions: %d verifyUser, %d switchUser", logins, switches)
	if logins < 32 || logins > 40 {
		t.Errorf("verifyUser calls in 24 h = %d, want 36 ± 4", logins)
	}
	if switches < 32 || switches > 40 {
		t.Errorf("switchUser calls in 24 h = %d, want 36 ± 4", switches)
	}
	if got := testutil.ToFloat64(mustCounter(t, e.reg, "erply_sessiond_logins_total", "pos", "ok")); int(got) != logins {
		t.Errorf("logins_total{pos,ok} = %v, want %d", got, logins)
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			ok := true
			for i, lp := range m.GetLabel() {
				if i < len(labels) && lp.GetValue() != labels[i] {
					ok = false
				}
			}
			if ok {
				return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x"}, func() float64 { return m.GetCounter().GetValue() })
			}
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return nil
}

func TestColdStartAndInvalidateStampede(t *testing.T) {
	e := newEnv(t)
	e.start(e.password1h("pos"))
	ctx := context.Background()

	run := func(n int, f func() (*pool.Snapshot, error)) []string {
		keys := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				s, err := f()
				if err != nil {
					t.Error(err)
					return
				}
				keys[i] = s.Session.SessionKey
			})
		}
		wg.Wait()
		return keys
	}
	first := run(1000, func() (*pool.Snapshot, error) { return e.pool.Get(ctx, "pos") })
	if got := e.fake.Calls("verifyUser"); got != 1 {
		t.Fatalf("1000 concurrent Get at cold start made %d verifyUser calls, want 1", got)
	}
	stale := first[0]
	for _, k := range first {
		if k != stale {
			t.Fatal("callers got different keys")
		}
	}
	second := run(1000, func() (*pool.Snapshot, error) { return e.pool.Invalidate(ctx, "pos", stale) })
	if got := e.fake.Calls("verifyUser"); got != 2 {
		t.Fatalf("1000 Invalidate with the same stale key: %d verifyUser calls in all, want 2", got)
	}
	for _, k := range second {
		if k == stale {
			t.Fatal("Invalidate returned the stale key")
		}
	}
	s, err := e.pool.Invalidate(ctx, "pos", stale) // an older key: no login
	if err != nil {
		t.Fatal(err)
	}
	if got := e.fake.Calls("verifyUser"); got != 2 {
		t.Fatalf("Invalidate with an older key logged in (%d calls)", got)
	}
	if s.Session.SessionKey != second[0] {
		t.Fatal("Invalidate with an older key did not answer the current session")
	}
	if _, err := e.pool.Get(ctx, "nope"); !errors.Is(err, pool.ErrUnknownCredential) {
		t.Fatalf("Get(unknown) = %v, want ErrUnknownCredential", err)
	}
}

func TestUpstreamOutageWithinSession(t *testing.T) {
	e := newEnv(t)
	e.start(e.password1h("pos"))
	e.open()
	key := e.get("pos").Session.SessionKey
	e.fake.Inject(erplytest.Fault{HTTPStatus: 503})
	for range 50 {
		e.clk.Advance(time.Minute)
		if got := e.get("pos").Session.SessionKey; got != key {
			t.Fatal("key changed although every login fails")
		}
	}
	s, _ := e.pool.Snapshot("pos")
	if s.State != pool.StateFailing || s.LastError == nil {
		t.Fatalf("state after failed refreshes = %s (%v), want failing with an error", s.State, s.LastError)
	}
	e.fake.ClearFaults()
	before := e.fake.Calls("verifyUser")
	// Recovery within one capped backoff step (5 min + jitter).
	recovered := false
	for range 6 {
		e.clk.Advance(time.Minute)
		if e.get("pos").Session.SessionKey != key {
			recovered = true
			break
		}
	}
	if !recovered {
		t.Fatal("no new session within 6 minutes of upstream recovering")
	}
	if got := e.fake.Calls("verifyUser") - before; got != 1 {
		t.Fatalf("recovery made %d logins, want 1", got)
	}
}

func TestUpstreamOutagePastExpiry(t *testing.T) {
	e := newEnv(t)
	e.start(e.password1h("pos"))
	e.open()
	e.fake.Inject(erplytest.Fault{HTTPStatus: 503})
	e.clk.Advance(59*time.Minute + 30*time.Second) // inside the 60 s margin
	_, err := e.pool.Get(context.Background(), "pos")
	var ue *pool.UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("Get after expiry = %v, want *UnavailableError", err)
	}
	if ue.RetryAfter <= 0 || !errors.Is(err, upstream.ErrUnavailable) {
		t.Fatalf("UnavailableError = %+v (%v), want a retry-after and the upstream reason", ue, err)
	}
	if s, _ := e.pool.Snapshot("pos"); s.State != pool.StateExpired {
		t.Fatalf("state = %s, want expired", s.State)
	}
	calls := e.fake.Calls("verifyUser")
	for range 100 { // callers hammering Get do not hammer Erply
		_, _ = e.pool.Get(context.Background(), "pos")
	}
	if got := e.fake.Calls("verifyUser"); got != calls {
		t.Fatalf("100 Get calls during backoff made %d logins", got-calls)
	}
	e.fake.ClearFaults()
	for i := 0; ; i++ {
		if i > 6 {
			t.Fatal("not recovered within one capped backoff step")
		}
		e.clk.Advance(time.Minute)
		if _, err := e.pool.Get(context.Background(), "pos"); err == nil {
			break
		}
	}
	e.get("pos")
}

func TestWrongPasswordBacksOffAndRecoversOnFileChange(t *testing.T) {
	e := newEnv(t)
	if err := os.WriteFile(e.pwFile, []byte("wrong-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := e.fake.AddAccount("200300")
	other.AddUser(erplytest.User{Username: "other", Password: "other-secret", UserID: 1})
	otherCred := config.Credential{Name: "other", Kind: config.KindPassword, ClientCode: "200300",
		APIURL: e.fake.APIURL(), Username: "other", Password: config.Secret{Value: "other-secret"}, SessionLength: 3600}
	e.start(e.password1h("pos"), otherCred)
	e.open()
	for range 60 {
		e.clk.Advance(time.Minute)
		_, _ = e.pool.Get(context.Background(), "pos")
		e.get("other")
		if e.fake.Blocked(e.code, e.user) {
			t.Fatalf("the daemon got the Erply user blocked at %s", e.clk.Now().Format(time.TimeOnly))
		}
	}
	attempts := e.fake.CallsFor(e.code, "verifyUser")
	t.Logf("wrong password: %d attempts in the first simulated hour", attempts)
	// 1, 2, 4, 8, 16, 30 minutes apart: attempts at 0, 1, 3, 7, 15, 31 min.
	if attempts != 6 {
		t.Errorf("attempts in 1 h = %d, want 6 (one per backoff period)", attempts)
	}
	if n := e.fake.TimesBlocked(e.code, e.user); n != 0 {
		t.Errorf("the daemon got the Erply user blocked %d times", n)
	}
	s, _ := e.pool.Snapshot("pos")
	if s.State != pool.StateExpired || !errors.Is(s.LastError, upstream.ErrLoginRefused) {
		t.Fatalf("state %s, error %v; want expired with a refused login", s.State, s.LastError)
	}
	// The operator fixes the file: the next look at it (within SecretPoll) logs in.
	if err := os.WriteFile(e.pwFile, []byte(e.password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(pool.SecretPoll)
	e.get("pos")
	if got := e.fake.CallsFor(e.code, "verifyUser"); got != attempts+1 {
		t.Fatalf("after fixing the file: %d more attempts, want 1", got-attempts)
	}
}

func TestPinFollowsParent(t *testing.T) {
	e := newEnv(t)
	e.start(e.password1h("pos"), e.pin1h("cashier", "pos"))
	e.open()
	parent, child := e.get("pos"), e.get("cashier")
	if child.Session.UserName != "cashier@demo.example" {
		t.Fatalf("pin session user = %q, want the PIN holder", child.Session.UserName)
	}
	if got := e.fake.LastForm("switchUser").Get("sessionKey"); got != parent.Session.SessionKey {
		t.Fatal("switchUser did not use the parent's key")
	}

	t.Run("parent refresh", func(t *testing.T) {
		s, err := e.pool.Invalidate(context.Background(), "pos", parent.Session.SessionKey)
		if err != nil {
			t.Fatal(err)
		}
		e.settle("cashier")
		c := e.get("cashier")
		if c.Session.SessionKey == child.Session.SessionKey {
			t.Fatal("pin session did not follow the parent's refresh")
		}
		if got := e.fake.LastForm("switchUser").Get("sessionKey"); got != s.Session.SessionKey {
			t.Fatal("the follow-up switchUser did not use the new parent key")
		}
		parent, child = s, c
	})

	t.Run("password changed upstream", func(t *testing.T) {
		const newPW = "changed-pw-2026"
		e.fake.ChangePassword(e.code, e.user, newPW)
		if e.fake.SessionValid(parent.Session.SessionKey) {
			t.Fatal("fake kept the parent session after a password change")
		}
		if err := os.WriteFile(e.pwFile, []byte(newPW), 0o600); err != nil {
			t.Fatal(err)
		}
		logins := e.fake.Calls("verifyUser")
		// The pin credential's next refresh finds the parent key dead (1054),
		// re-logs the parent once, and switches again.
		c, err := e.pool.Invalidate(context.Background(), "cashier", child.Session.SessionKey)
		if err != nil {
			t.Fatal(err)
		}
		e.settle("pos", "cashier")
		if got := e.fake.Calls("verifyUser") - logins; got != 1 {
			t.Fatalf("parent re-logins = %d, want 1", got)
		}
		e.get("pos")
		c = e.get("cashier")
		if c.Session.SessionKey == child.Session.SessionKey {
			t.Fatal("pin credential kept its old session")
		}
	})
}

func TestJWTRenewedWithoutLogin(t *testing.T) {
	e := newEnv(t)
	e.fake.SetJWTLifetime(20 * time.Minute)
	e.start(e.password1h("pos"))
	e.open()
	tok := e.get("pos").Session.Token
	if tok == "" {
		t.Fatal("no JWT in the session")
	}
	for range 15 {
		e.clk.Advance(time.Minute)
	}
	s := e.get("pos")
	if s.Session.Token == tok {
		t.Fatal("JWT not renewed before it expired")
	}
	if exp := upstream.TokenExpiry(s.Session.Token); !exp.After(e.clk.Now()) {
		t.Fatalf("served JWT expired at %v", exp)
	}
	if got := e.fake.Calls("getJwtToken"); got < 1 {
		t.Fatal("no getJwtToken call")
	}
	if got := e.fake.Calls("verifyUser"); got != 1 {
		t.Fatalf("JWT renewal logged in again (%d verifyUser)", got)
	}
}

func TestReloadKeepsUnchangedSessions(t *testing.T) {
	e := newEnv(t)
	pos := e.password1h("pos")
	e.start(pos)
	e.open()
	key := e.get("pos").Session.SessionKey
	var removed []string
	var mu sync.Mutex
	cancel := e.pool.Subscribe(func(s *pool.Snapshot) {
		if s.Removed {
			mu.Lock()
			removed = append(removed, s.Name)
			mu.Unlock()
		}
	})
	defer cancel()

	e.pool.Update([]config.Credential{pos, e.pin1h("cashier", "pos")})
	e.settle("cashier")
	if e.get("pos").Session.SessionKey != key {
		t.Fatal("unchanged credential lost its session on reload")
	}
	e.get("cashier")
	if got := e.fake.Calls("verifyUser"); got != 1 {
		t.Fatalf("reload made %d verifyUser calls, want the original 1", got)
	}
	e.pool.Update([]config.Credential{pos})
	if _, err := e.pool.Get(context.Background(), "cashier"); !errors.Is(err, pool.ErrUnknownCredential) {
		t.Fatalf("removed credential: %v, want ErrUnknownCredential", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(removed) != 1 || removed[0] != "cashier" {
		t.Fatalf("removed snapshots published: %v", removed)
	}
}
