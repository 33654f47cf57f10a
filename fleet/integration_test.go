package fleet_test

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/fleet"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// secretSet collects every secret the daemons handle: the password, the
// PIN, and every session key and JWT any daemon ever held.
type secretSet struct {
	mu sync.Mutex
	m  map[string]string // secret → what it is
}

func (s *secretSet) add(what, v string) {
	if v == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[v] = what
}

func (s *secretSet) watch(d *daemon) func() {
	return d.pool.Subscribe(func(snap *pool.Snapshot) {
		if snap.Session != nil {
			s.add("session key", snap.Session.SessionKey)
			s.add("JWT", snap.Session.Token)
			s.add("identity JWT", snap.Session.IdentityToken)
		}
	})
}

// monitor records every command Redis executes (MONITOR), arguments included.
func monitor(t *testing.T, sock string) (stop func() []byte) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadBytes('\n')
			buf.Write(line)
			if err != nil {
				return
			}
		}
	}()
	return func() []byte {
		c.Close()
		<-done
		return buf.Bytes()
	}
}

// Nothing readable in Redis — no key name, value, script argument or
// channel message — contains a session key, JWT, password or PIN, while
// three daemons log in, refresh, switch a pin and renew JWTs; and the pin
// switches and JWT renewals are shared too (a daemon alone is the yardstick).
func TestNothingReadableInRedis(t *testing.T) {
	needRedis(t)
	be := realBackend(t)
	w := newWorld(t, be)
	w.fake.SetJWTLifetime(20 * time.Second)
	// A PIN long enough that finding it means something.
	w.pin = "804713926551"
	for _, code := range []string{w.code, "654321"} {
		a := w.fake.AddAccount(code)
		a.AddUser(erplyUser(w.user, w.password, 6))
		a.AddUser(erplyCashier(w.pin))
	}

	secrets := &secretSet{m: map[string]string{w.password: "password", w.pin: "PIN"}}
	stopMon := monitor(t, be.srv.sock)
	rdb := be.client(t)
	ctx := context.Background()
	ps := rdb.PSubscribe(ctx, "sessiond:*")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	var msgs bytes.Buffer
	var msgMu sync.Mutex
	msgDone := make(chan struct{})
	go func() {
		defer close(msgDone)
		for m := range ps.Channel() {
			msgMu.Lock()
			msgs.WriteString(m.Channel + " " + m.Payload + "\n")
			msgMu.Unlock()
		}
	}()

	creds := func(code string) []config.Credential {
		pos, cashier := w.pwCred("pos", 60), w.pinCred("cashier", "pos", 60)
		pos.ClientCode, cashier.ClientCode = code, code
		return []config.Credential{pos, cashier}
	}
	var ds []*daemon
	for range 3 {
		d := w.start(creds(w.code))
		defer secrets.watch(d)()
		ds = append(ds, d)
	}
	lone := w.startAlone(creds("654321"))
	w.openAll(append(ds, lone)...)
	var dumps bytes.Buffer
	w.advance(70*time.Second, 500*time.Millisecond, func() {
		for _, name := range []string{"pos", "cashier"} {
			w.converge(name, time.Second, ds...)
			for _, d := range ds {
				w.mustServe(d, name)
			}
		}
		dumpRedis(t, rdb, &dumps)
	})
	mon := stopMon()
	ps.Close()
	<-msgDone

	for _, call := range []string{"verifyUser", "switchUser", "getJwtToken"} {
		fleetN, aloneN := w.fake.CallsFor(w.code, call), w.fake.CallsFor("654321", call)
		t.Logf("70 s of 60 s sessions with 20 s JWTs: %s: 3 daemons in a fleet %d, one daemon alone %d", call, fleetN, aloneN)
		// The fleet refreshes when its earliest daemon's jittered point
		// comes, a little before a lone daemon's: one call more per
		// credential at most; unshared it would be about three times as many.
		if aloneN < 2 || fleetN > aloneN+2 {
			t.Errorf("%s: the fleet of three made %d calls, one daemon alone %d: not shared", call, fleetN, aloneN)
		}
	}
	msgMu.Lock()
	all := map[string][]byte{"MONITOR": mon, "key dump": dumps.Bytes(), "channel messages": msgs.Bytes()}
	msgMu.Unlock()
	secrets.mu.Lock()
	defer secrets.mu.Unlock()
	if len(secrets.m) < 10 {
		t.Fatalf("only %d secrets seen: the scenario did not run", len(secrets.m))
	}
	for where, b := range all {
		if len(b) == 0 {
			t.Fatalf("%s is empty: nothing was captured", where)
		}
		for v, what := range secrets.m {
			if bytes.Contains(b, []byte(v)) {
				t.Errorf("%s holds a %s in clear", where, what)
			}
		}
	}
	t.Logf("checked %d secrets against %d bytes of MONITOR, %d of key dumps, %d of channel messages",
		len(secrets.m), len(mon), dumps.Len(), msgs.Len())
	if !strings.Contains(string(mon), "sessiond:{test/pos}:session") {
		t.Fatal("the MONITOR capture does not show the fleet's writes")
	}
}

// The lock holder is SIGKILLed while its login hangs at the fake Erply:
// another daemon's login completes within the lock TTL plus a second, and
// it serves its valid key meanwhile.
func TestHolderKilled(t *testing.T) {
	needRedis(t)
	be := realBackend(t)
	w := newWorld(t, be)
	w.lockTTL = time.Second
	c := w.start([]config.Credential{w.pwCred("pos", 3600)})
	w.openAll(c)
	k1 := w.mustServe(c, "pos")

	w.fake.Inject(erplytest.Fault{Request: "verifyUser", Latency: time.Minute, Count: 1})
	before := w.fake.Calls("verifyUser")
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), helperEnv+"=1",
		"FLEET_HELPER_REDIS="+be.url, "FLEET_HELPER_KEYS="+w.keyFile, "FLEET_HELPER_API="+w.fake.APIURL(),
		"FLEET_HELPER_CODE="+w.code, "FLEET_HELPER_USER="+w.user, "FLEET_HELPER_PWFILE="+w.pwFile)
	helper.Stderr = os.Stderr
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- helper.Wait() }()
	t.Cleanup(func() { _ = helper.Process.Kill(); <-exited })

	// Ready when the helper holds the lock and its login has reached Erply.
	rdb := be.client(t)
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for w.fake.Calls("verifyUser") == before || rdb.Exists(ctx, "sessiond:{test/pos}:lock").Val() == 0 {
		select {
		case err := <-exited:
			t.Fatalf("the helper exited: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the helper never took the lock")
		}
	}
	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()

	done := make(chan string, 1)
	go func() {
		s, err := c.pool.Invalidate(ctx, "pos", k1)
		if err != nil {
			t.Errorf("Invalidate: %v", err)
			done <- ""
			return
		}
		done <- s.Session.SessionKey
	}()
	if got := w.mustServe(c, "pos"); got != k1 {
		t.Fatal("the waiting daemon stopped serving its valid key")
	}
	k2 := <-done
	took := time.Since(killed)
	t.Logf("holder SIGKILLed mid-login: the other daemon's login completed %s later (lock TTL %s)", took.Round(time.Millisecond), w.lockTTL)
	if k2 == "" || k2 == k1 {
		t.Fatal("no new session")
	}
	if took > w.lockTTL+time.Second {
		t.Fatalf("took %s, more than the lock TTL + 1 s", took)
	}
	if n := w.fake.Calls("verifyUser") - before; n != 2 {
		t.Fatalf("verifyUser calls = %d, want 2 (the dead holder's and the takeover)", n)
	}
	if n := testutil.ToFloat64(c.fleetMetric(t, "erply_sessiond_fleet_lock_waits_total")); n != 1 {
		t.Fatalf("lock waits = %v, want 1", n)
	}
}

// Redis SIGSTOPped, then SIGKILLed, before refresh points: no daemon ever
// serves an expired key or fails a read while its session is valid; the
// fallback logins are spread; when Redis answers again (resumed, or
// restarted empty) the fleet is back on one key without a login, and the
// next interval costs one login.
func TestRedisDown(t *testing.T) {
	needRedis(t)
	be := realBackend(t)
	w := newWorld(t, be)
	var ds []*daemon
	for range 3 {
		ds = append(ds, w.start([]config.Credential{w.pwCred("pos", 6)}))
	}
	w.openAll(ds...)
	w.converge("pos", time.Second, ds...)
	check := func() {
		for _, d := range ds {
			w.mustServe(d, "pos") // a 503 or an expired key fails here
		}
	}
	outage := func(what string, stop, back func()) {
		t.Helper()
		logins := len(w.loginEvents())
		stop()
		// Through every daemon's refresh point (0.67 ± 0.05 of 6 s).
		w.advance(4500*time.Millisecond, 100*time.Millisecond, check)
		ev := w.loginEvents()[logins:]
		if len(ev) != len(ds) {
			t.Fatalf("%s: %d fallback logins, want one per daemon", what, len(ev))
		}
		first, last := ev[0].at, ev[0].at
		for _, e := range ev {
			first, last = minTime(first, e.at), maxTime(last, e.at)
		}
		for _, d := range ds {
			if mode, why := d.fleet.Status("pos"); mode != fleet.ModeLocal || !strings.Contains(why, "Redis unreachable") {
				t.Fatalf("%s: daemon %d status %s (%s), want local: Redis unreachable", what, d.i, mode, why)
			}
			if up := testutil.ToFloat64(d.fleetMetric(t, "erply_sessiond_fleet_redis_up")); up != 0 {
				t.Fatalf("%s: redis_up = %v", what, up)
			}
		}
		if last.Sub(first) < 50*time.Millisecond {
			t.Fatalf("%s: the fallback logins all came within %s", what, last.Sub(first))
		}
		logins = len(w.loginEvents())
		back()
		_, took := w.converge("pos", 3*time.Second, ds...)
		if n := len(w.loginEvents()) - logins; n != 0 {
			t.Fatalf("%s: %d logins when Redis came back, want none", what, n)
		}
		check()
		t.Logf("%s: %d fallback logins spread over %s; one key again %s after Redis came back, without a login",
			what, len(ev), last.Sub(first).Round(time.Millisecond), took.Round(time.Millisecond))
	}
	outage("SIGSTOP", func() { be.srv.signal(syscall.SIGSTOP) }, func() { be.srv.signal(syscall.SIGCONT) })
	outage("SIGKILL, restarted empty", be.srv.kill, be.srv.start)

	// The next interval: one login for all.
	logins := len(w.loginEvents())
	w.advance(4500*time.Millisecond, 100*time.Millisecond, func() {
		w.converge("pos", time.Second, ds...)
		check()
	})
	if n := len(w.loginEvents()) - logins; n != 1 {
		t.Fatalf("the interval after the outages made %d logins, want 1", n)
	}
	for _, d := range ds {
		if mode, why := d.fleet.Status("pos"); mode != fleet.ModeShared {
			t.Fatalf("daemon %d is %s (%s) after Redis came back", d.i, mode, why)
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// fleetACL is the least a fleet daemon's Redis user needs: its keys and
// channels (sessiond:*) and the commands it and its scripts run. The
// README gives it to operators; this test proves it is enough.
var fleetACL = []string{"on", ">acl-pw-1", "resetkeys", "~sessiond:*", "resetchannels", "&sessiond:*",
	"-@all", "+ping", "+get", "+set", "+del", "+hmget", "+hset", "+pexpire", "+publish", "+subscribe", "+evalsha", "+eval"}

// Daemons logged in as a Redis user with fleetACL share as usual; a user
// without EVALSHA keeps them local with the refusal in the status.
func TestACLUser(t *testing.T) {
	needRedis(t)
	be := realBackend(t)
	rdb := be.client(t)
	ctx := context.Background()
	args := []any{"ACL", "SETUSER", "sessiond"}
	for _, a := range fleetACL {
		args = append(args, a)
	}
	if err := rdb.Do(ctx, args...).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Do(ctx, "ACL", "SETUSER", "narrow", "on", ">acl-pw-2", "~sessiond:*", "&sessiond:*", "-@all", "+ping", "+hmget", "+set", "+subscribe").Err(); err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, be)
	url := "unix://sessiond:acl-pw-1@" + be.srv.sock
	ds := []*daemon{w.start([]config.Credential{w.pwCred("pos", 3600)}, withURL(url)), w.start([]config.Credential{w.pwCred("pos", 3600)}, withURL(url))}
	w.openAll(ds...)
	k, _ := w.converge("pos", time.Second, ds...)
	if _, err := ds[1].pool.Invalidate(ctx, "pos", k); err != nil {
		t.Fatal(err)
	}
	w.converge("pos", time.Second, ds...)
	if n := w.fake.Calls("verifyUser"); n != 2 {
		t.Fatalf("verifyUser = %d with the ACL user, want 2 (shared)", n)
	}
	for _, d := range ds {
		if mode, why := d.fleet.Status("pos"); mode != fleet.ModeShared {
			t.Fatalf("with the ACL user: %s (%s)", mode, why)
		}
	}

	// A user that may read but not run the scripts adopts, and when it
	// must log in itself it does so locally and says why.
	narrow := w.start([]config.Credential{w.pwCred("pos", 3600)}, withURL("unix://narrow:acl-pw-2@"+be.srv.sock),
		func(o *fleet.Options) { o.BreakerCooldown = time.Minute })
	w.openAll(narrow)
	k = w.mustServe(narrow, "pos")
	if _, err := narrow.pool.Invalidate(ctx, "pos", k); err != nil {
		t.Fatal(err)
	}
	if w.mustServe(narrow, "pos") == k {
		t.Fatal("no new session")
	}
	if mode, why := narrow.fleet.Status("pos"); mode != fleet.ModeLocal || !strings.Contains(why, "NOPERM") {
		t.Fatalf("a user the ACL refuses: %s (%s), want local naming NOPERM", mode, why)
	}
}
