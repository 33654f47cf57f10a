package fleet_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/fleet"
	"github.com/erply-sessiond/erply-sessiond/internal/answer"
	"github.com/erply-sessiond/erply-sessiond/password"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

var _ password.Locker = (*fleet.Fleet)(nil)

// rotator is a password.Rotator for d wired as the daemon wires it: the
// pool's password files and the fleet as the Locker.
func (d *daemon) rotator(t *testing.T, up password.Upstream) *password.Rotator {
	t.Helper()
	if up == nil {
		up = d.up
	}
	r, err := password.NewRotator(password.Options{Sessions: d.pool, Upstream: up, Files: d.files,
		Clock: d.clk, Logger: d.log, Locker: d.fleet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// readers keep asking every daemon for name's key until stop, as callers
// do, and report a key Erply refuses the way a client does (Invalidate).
type readers struct {
	w                  *world
	name               string
	stop               chan struct{}
	wg                 sync.WaitGroup
	reads, dead, stale atomic.Int64
	mu                 sync.Mutex
	errs               []error
}

func (w *world) startReaders(name string, ds ...*daemon) *readers {
	r := &readers{w: w, name: name, stop: make(chan struct{})}
	for _, d := range ds {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			ctx := context.Background()
			for {
				select {
				case <-r.stop:
					return
				default:
				}
				s, err := d.pool.Get(ctx, name)
				r.reads.Add(1)
				switch {
				case err != nil:
					r.fail(err)
				case !s.Valid(d.clk.Now(), d.pool.MarginOf(s)):
					r.fail(errors.New("a key inside its safety margin was served"))
				case !w.fake.SessionValid(s.Session.SessionKey):
					// Killed at Erply by the change, not yet replaced here.
					r.dead.Add(1)
					if _, err := d.pool.Invalidate(ctx, name, s.Session.SessionKey); err != nil {
						r.fail(err)
					}
				}
				// Callers at a steady pace, not a spin that starves the rotation.
				time.Sleep(200 * time.Microsecond)
			}
		}()
	}
	return r
}

func (r *readers) fail(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
}

func (r *readers) end(t *testing.T) {
	t.Helper()
	close(r.stop)
	r.wg.Wait()
	for _, err := range r.errs {
		t.Errorf("a reader of %s: %v", r.name, err)
	}
}

// A password rotation on one daemon of three: it holds the fleet lock
// through the change and publishes the session changePassword returned;
// the other two adopt it with no login (their own sessions died at Erply
// with the change, and callers who meet the dead key report it), the pin
// credential switches once fleet-wide, and no caller got an error or a
// key inside its margin.
func TestRotationSharesNewSession(t *testing.T) {
	for _, bk := range backends(t) {
		t.Run(bk.name, func(t *testing.T) {
			be := bk.make(t)
			w := newWorld(t, be)
			creds := func() []config.Credential {
				return []config.Credential{w.pwCred("pos", 3600), w.pinCred("cashier", "pos", 3600)}
			}
			ds := []*daemon{w.start(creds()), w.start(creds()), w.start(creds())}
			w.openAll(ds...)
			old, _ := w.converge("pos", time.Second, ds...)
			oldPin, _ := w.converge("cashier", time.Second, ds...)
			rot := ds[0].rotator(t, nil)
			verify, switches := w.fake.Calls("verifyUser"), w.fake.Calls("switchUser")
			var adoptedBefore float64
			for _, d := range ds[1:] {
				adoptedBefore += testutil.ToFloat64(d.fleetMetric(t, "erply_sessiond_fleet_adopted_total"))
			}

			rd := w.startReaders("pos", ds...)
			snap, err := rot.Rotate(context.Background(), "pos")
			if err != nil {
				rd.end(t)
				t.Fatalf("Rotate: %v", err)
			}
			rotated := snap.Session.SessionKey
			key, took := w.converge("pos", time.Second, ds...)
			w.convergeAway("cashier", oldPin, 2*time.Second, ds...)
			rd.end(t)
			t.Logf("%s: all 3 serve the rotated session %s after Rotate returned; %d reads, %d met the key the change killed",
				be.name, took.Round(time.Microsecond), rd.reads.Load(), rd.dead.Load())

			if key != rotated || key == old {
				t.Fatal("the daemons do not serve the session changePassword returned")
			}
			if n := w.fake.Calls("verifyUser") - verify; n != 0 {
				t.Fatalf("%d logins after the rotation, want 0 (the others adopt)", n)
			}
			if n := w.fake.Calls("switchUser") - switches; n != 1 {
				t.Fatalf("%d PIN switches after the rotation, want 1 fleet-wide", n)
			}
			if n := w.fake.Calls("changePassword"); n != 1 {
				t.Fatalf("changePassword calls = %d", n)
			}
			b, err := os.ReadFile(w.pwFile)
			if err != nil || strings.TrimSpace(string(b)) != w.fake.Password(w.code, w.user) || w.fake.Password(w.code, w.user) == w.password {
				t.Fatalf("the password file does not hold the new password (%v)", err)
			}
			var adopted float64
			for _, d := range ds[1:] {
				adopted += testutil.ToFloat64(d.fleetMetric(t, "erply_sessiond_fleet_adopted_total"))
				w.mustServe(d, "pos")
				w.mustServe(d, "cashier")
			}
			if adopted-adoptedBefore < 2 {
				t.Fatalf("the other daemons adopted %v sessions, want the rotated one each", adopted-adoptedBefore)
			}
			if lock, _ := be.client(t).Exists(context.Background(), "sessiond:{test/pos}:lock").Result(); lock != 0 {
				t.Fatal("the lock was not released after the change")
			}
		})
	}
}

// slowChange is an Erply whose changePassword answers after a delay.
type slowChange struct {
	password.Upstream
	delay   time.Duration
	started chan struct{}
}

func (s slowChange) ChangePassword(ctx context.Context, acct upstream.Account, key, oldPW, newPW string, length int) (*upstream.Session, error) {
	close(s.started)
	time.Sleep(s.delay)
	return s.Upstream.ChangePassword(ctx, acct, key, oldPW, newPW, length)
}

// The lock is renewed through a change that lasts several lock TTLs: a
// daemon asked for a new session meanwhile waits for the change instead of
// logging in when the lock's first TTL runs out. (A real redis-server:
// miniredis's TTLs do not run by themselves.)
func TestRotationHoldsLockThroughChange(t *testing.T) {
	be := realBackend(t)
	w := newWorld(t, be)
	w.lockTTL = 300 * time.Millisecond
	ds := []*daemon{w.start([]config.Credential{w.pwCred("pos", 3600)}), w.start([]config.Credential{w.pwCred("pos", 3600)})}
	w.openAll(ds...)
	old, _ := w.converge("pos", time.Second, ds...)
	slow := slowChange{Upstream: ds[0].up, delay: 4 * w.lockTTL, started: make(chan struct{})}
	rot := ds[0].rotator(t, slow)
	verify := w.fake.Calls("verifyUser")

	done := make(chan error, 1)
	go func() { _, err := rot.Rotate(context.Background(), "pos"); done <- err }()
	<-slow.started
	// A caller of the other daemon reports the key stale while the change runs.
	began := time.Now()
	s, err := ds[1].pool.Invalidate(context.Background(), "pos", old)
	if err != nil {
		t.Fatal(err)
	}
	waited := time.Since(began)
	if err := <-done; err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if n := w.fake.Calls("verifyUser") - verify; n != 0 {
		t.Fatalf("%d logins while the change held the lock for %v (lock TTL %v), want 0", n, slow.delay, w.lockTTL)
	}
	if s.Session.SessionKey != ds[0].key("pos") || !w.fake.SessionValid(s.Session.SessionKey) {
		t.Fatal("the waiting daemon did not get the rotated session")
	}
	if testutil.ToFloat64(ds[1].fleetMetric(t, "erply_sessiond_fleet_lock_waits_total")) < 1 {
		t.Fatal("the other daemon did not wait for the lock")
	}
	t.Logf("the other daemon waited %s for a change of %s (lock TTL %s) and adopted its session",
		waited.Round(time.Millisecond), slow.delay, w.lockTTL)
}

// Redis unreachable: a rotation is refused with 503 before any call to
// Erply, and the password and its file stay as they were; so is one whose
// caller gives up while another daemon holds the lock. A credential kept
// local rotates without the fleet.
func TestRotationWithoutRedis(t *testing.T) {
	be := miniBackend(t)
	w := newWorld(t, be)
	ds := []*daemon{w.start([]config.Credential{w.pwCred("pos", 3600)}), w.start([]config.Credential{w.pwCred("pos", 3600)})}
	w.openAll(ds...)
	w.converge("pos", time.Second, ds...)
	rot := ds[0].rotator(t, nil)

	waits := testutil.ToFloat64(ds[0].fleetMetric(t, "erply_sessiond_fleet_lock_waits_total"))
	be.mr.Set("sessiond:{test/pos}:lock", "another-daemon")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := rot.Rotate(ctx, "pos")
	cancel()
	be.mr.Del("sessiond:{test/pos}:lock")
	var ae *answer.Error
	if !errors.As(err, &ae) || ae.Status != 503 || ae.Code != "fleet_lock_busy" {
		t.Fatalf("Rotate while another daemon holds the lock, caller gone = %v, want a 503 fleet_lock_busy", err)
	}
	if testutil.ToFloat64(ds[0].fleetMetric(t, "erply_sessiond_fleet_lock_waits_total")) != waits+1 {
		t.Fatal("the wait for the lock was not counted")
	}

	be.mr.SetError("LOADING Redis is loading the dataset in memory")
	_, err = rot.Rotate(context.Background(), "pos")
	be.mr.SetError("")
	if !errors.As(err, &ae) || ae.Status != 503 || ae.Code != "fleet_unavailable" || ae.RetryAfter <= 0 {
		t.Fatalf("Rotate with Redis down = %v, want a 503 fleet_unavailable with a Retry-After", err)
	}
	if n := w.fake.Calls("changePassword"); n != 0 {
		t.Fatalf("changePassword called %d times with Redis down", n)
	}
	b, _ := os.ReadFile(w.pwFile)
	if strings.TrimSpace(string(b)) != w.password || w.fake.Password(w.code, w.user) != w.password {
		t.Fatal("the password changed")
	}
	if _, err := os.Stat(w.pwFile + password.NextSuffix); !os.IsNotExist(err) {
		t.Fatal("PASSWORD_FILE.next was written")
	}

	// SESSIOND_POS_FLEET=false: no lock, no record, rotated as without fleet mode.
	local := w.pwCred("solo", 3600)
	local.FleetLocal = true
	d := w.start([]config.Credential{local})
	w.openAll(d)
	if _, err := d.rotator(t, nil).Rotate(context.Background(), "solo"); err != nil {
		t.Fatalf("a credential kept local: Rotate: %v", err)
	}
	for _, k := range be.mr.Keys() {
		if strings.Contains(k, "solo") {
			t.Fatalf("a credential kept local touched Redis: %s", k)
		}
	}
}
