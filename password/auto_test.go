package password_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/internal/answer"
	"github.com/erply-sessiond/erply-sessiond/password"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

func (e *env) autoPassword(name string) config.Credential {
	c := e.password(name)
	c.RotatePassword = config.RotateExpired
	return c
}

// day advances the clock a minute at a time for 24 hours, waiting after
// each step for the rotations it started; every scheduled refresh logs in.
func (d *daemon) day() {
	for range 24 * 60 {
		d.e.clk.Advance(time.Minute)
		d.rot.WaitIdle()
		d.get("pos")
	}
}

// TestAutomaticOnceADay: with ROTATE_PASSWORD=expired, an expired password
// is rotated once, after the login that said so, and never again over a
// day of refreshes once Erply stops saying it.
func TestAutomaticOnceADay(t *testing.T) {
	e := newEnv(t)
	e.fake.SetPasswordExpired(e.code, e.user, true)
	d := e.start(daemonOptions{creds: []config.Credential{e.autoPassword("pos"), e.pinOn("cashier", "pos")}})
	d.open()
	d.rot.WaitIdle()
	d.day()
	d.close()
	logins := e.fake.Calls("verifyUser")
	t.Logf("24 h: %d verifyUser, %d changePassword", logins, e.fake.Calls("changePassword"))
	if n := e.fake.Calls("changePassword"); n != 1 {
		t.Fatalf("changePassword calls over a day = %d, want 1", n)
	}
	if got := d.rotations("pos", "ok"); got != 1 {
		t.Fatalf("rotations_total{pos,ok} = %v, want 1", got)
	}
	if logins < 30 {
		t.Fatalf("only %d logins in a day: the refreshes did not run", logins)
	}
	if e.fileContent() != e.fake.Password(e.code, e.user) || e.nextExists() {
		t.Fatal("the file does not hold Erply's password")
	}
	if n := strings.Count(e.logs.String(), "Erply says the password has expired"); n != 1 {
		t.Fatalf("%d expired-password warnings, want 1 (only the first login said so)", n)
	}
}

// TestAutomaticAtMostHourly: while Erply keeps saying the password expired
// (the flag set again after every change), a rotation starts after a login
// that says so only when the last one started at least an hour before, and
// every such login logs a warning.
func TestAutomaticAtMostHourly(t *testing.T) {
	e := newEnv(t)
	e.fake.SetPasswordExpired(e.code, e.user, true)
	d := e.start(daemonOptions{creds: []config.Credential{e.autoPassword("pos")}})
	var mu sync.Mutex
	var changes []time.Time
	lastKey := ""
	defer d.pool.Subscribe(func(s *pool.Snapshot) {
		if s.Name != "pos" || s.Session == nil || s.Session.Request != "changePassword" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if s.Session.SessionKey != lastKey {
			lastKey = s.Session.SessionKey
			changes = append(changes, e.clk.Now())
			e.fake.SetPasswordExpired(e.code, e.user, true)
			// Every password of the day must stay out of the logs.
			e.secretsNeverShown = append(e.secretsNeverShown, e.fake.Password(e.code, e.user))
		}
	})()
	d.open()
	d.rot.WaitIdle()
	d.day()
	d.close()
	mu.Lock()
	defer mu.Unlock()
	n := e.fake.Calls("changePassword")
	t.Logf("24 h with the password always expired: %d rotations, %d logins", n, e.fake.Calls("verifyUser"))
	if n != len(changes) || n < 12 || n > 24 {
		t.Fatalf("%d changePassword calls, %d installs; want the same, between 12 and 24", n, len(changes))
	}
	for i := 1; i < len(changes); i++ {
		if gap := changes[i].Sub(changes[i-1]); gap < time.Hour {
			t.Fatalf("rotations %d and %d only %v apart", i, i+1, gap)
		}
	}
	logins := e.fake.Calls("verifyUser")
	if w := strings.Count(e.logs.String(), "Erply says the password has expired"); w != logins {
		t.Fatalf("%d warnings for %d logins that all said the password expired", w, logins)
	}
}

// TestNeverTwiceInFlight: while a rotation is in flight another is refused
// with 409 rotation_in_flight, and the Locker (the fleet's, later) is held
// around the change itself.
func TestNeverTwiceInFlight(t *testing.T) {
	e := newEnv(t)
	e.fake.SetPasswordExpired(e.code, e.user, true)
	entered, release := make(chan struct{}), make(chan struct{})
	var lk testLocker
	d := e.start(daemonOptions{creds: []config.Credential{e.autoPassword("pos")}, api: true,
		rotOpt: func(o *password.Options) { o.Locker = &lk },
		wrapUp: func(up password.Upstream) password.Upstream {
			return upstreamFunc(func(ctx context.Context, a upstream.Account, k, oldPW, newPW string, n int) (*upstream.Session, error) {
				if !lk.isHeld("pos") {
					t.Error("changePassword called without the Locker held")
				}
				close(entered)
				<-release
				return up.ChangePassword(ctx, a, k, oldPW, newPW, n)
			})
		}})
	d.open() // the login says expired: an automatic rotation starts
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no automatic rotation started after a login that said the password expired")
	}
	status, body := d.do(http.MethodPost, "/v1/sessions/pos/rotate-password")
	if eb := decode[errorBody](t, body); status != http.StatusConflict || eb.Error != "rotation_in_flight" {
		t.Fatalf("rotate during another = %d %s", status, body)
	}
	_, err := d.rot.Rotate(context.Background(), "pos")
	if ae := answer.Of(err); ae.Status != http.StatusConflict {
		t.Fatalf("Rotate during another: %v", err)
	}
	close(release)
	d.rot.WaitIdle()
	if n := e.fake.Calls("changePassword"); n != 1 {
		t.Fatalf("changePassword calls = %d, want 1", n)
	}
	if lk.isHeld("pos") || lk.taken != 1 {
		t.Fatalf("Locker taken %d times, still held %v; want once, released", lk.taken, lk.isHeld("pos"))
	}
	if got := d.rotations("pos", "conflict"); got != 2 {
		t.Fatalf("rotations_total{pos,conflict} = %v, want 2", got)
	}
}

// testLocker is a Locker that records whether it is held.
type testLocker struct {
	mu    sync.Mutex
	held  map[string]bool
	taken int
}

func (l *testLocker) Lock(_ context.Context, name string) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = map[string]bool{}
	}
	l.held[name] = true
	l.taken++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.held[name] = false
	}, nil
}

func (l *testLocker) isHeld(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held[name]
}

// rotations is erply_sessiond_password_rotations_total{credential, result}.
func (d *daemon) rotations(credential, result string) float64 {
	d.e.t.Helper()
	mfs, err := d.reg.Gather()
	if err != nil {
		d.e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "erply_sessiond_password_rotations_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["credential"] == credential && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
