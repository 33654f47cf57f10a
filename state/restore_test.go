package state

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// A restart while the sessions are valid makes no login, serves the same
// keys, asks Erply once per credential, and keeps the refresh schedule of
// the original login.
func TestRestartWithValidSessions(t *testing.T) {
	e := newEnv(t)
	creds := []config.Credential{e.password1h("pos"), e.pin1h("cashier", "pos")}
	d1 := e.start(creds...)
	pos, cashier := d1.key("pos"), d1.key("cashier")
	e.clk.Advance(10 * time.Minute)
	d1.shutdown()

	e.fake.ResetCounters()
	d2 := e.start(creds...)
	if v, s := e.logins(); v != 0 || s != 0 {
		t.Errorf("restart made %d verifyUser and %d switchUser, want 0", v, s)
	}
	if n := e.fake.Calls("getSessionKeyInfo"); n != 2 {
		t.Errorf("restart made %d getSessionKeyInfo, want 1 per credential (2)", n)
	}
	for name, want := range map[string]string{"pos": pos, "cashier": cashier} {
		if o := d2.outcome(name); o.Result != Restored {
			t.Errorf("%s: restore outcome %+v, want restored", name, o)
		}
		if got := d2.key(name); got != want {
			t.Errorf("%s: after restart a different key is served", name)
		}
	}
	if got := testutil.ToFloat64(d2.store.m.restored.WithLabelValues(checkValid)); got != 2 {
		t.Errorf("sessions_restored_total{check=valid} = %v, want 2", got)
	}
	// The restored session is refreshed where the original login put its
	// refresh (about 40 min after it), not 2/3 of an hour after the restart.
	e.clk.Advance(20 * time.Minute) // 30 min after the login
	if v, _ := e.logins(); v != 0 {
		t.Errorf("%d verifyUser 30 min after the login, want 0", v)
	}
	e.clk.Advance(15 * time.Minute) // 45 min after the login
	d2.waitNewKey("cashier", cashier)
	if v, s := e.logins(); v != 1 || s != 1 {
		t.Errorf("45 min after the login: %d verifyUser, %d switchUser; want 1 and 1 (the usual refresh)", v, s)
	}
	if d2.key("pos") == pos {
		t.Error("the refresh did not replace the restored key")
	}
}

// A restart while Erply answers 503 to everything serves the saved keys
// until the margin, then 503; when Erply comes back, one login and service.
func TestRestartDuringOutageServesSavedKeyUntilMargin(t *testing.T) {
	e := newEnv(t)
	creds := []config.Credential{e.password1h("pos"), e.pin1h("cashier", "pos")}
	d1 := e.start(creds...)
	pos, cashier := d1.key("pos"), d1.key("cashier")
	loginAt := start
	e.clk.Advance(10 * time.Minute)
	d1.shutdown()

	e.fake.Inject(erplytest.Fault{HTTPStatus: 503})
	e.fake.ResetCounters()
	d2 := e.start(creds...)
	for _, name := range []string{"pos", "cashier"} {
		if o := d2.outcome(name); o.Result != Unverified {
			t.Fatalf("%s: restore outcome %+v, want unverified", name, o)
		}
	}
	// Served minute by minute up to the margin (60 s before the expiry an
	// hour after the login), through the pool's failing refreshes.
	for e.clk.Now().Before(loginAt.Add(59 * time.Minute)) {
		if d2.key("pos") != pos || d2.key("cashier") != cashier {
			t.Fatalf("at %s a different key is served during the outage", e.clk.Now().Format(time.TimeOnly))
		}
		e.clk.Advance(time.Minute)
	}
	e.clk.Set(loginAt.Add(59*time.Minute + time.Second))
	ue := d2.unavailable("pos")
	if ue.RetryAfter <= 0 {
		t.Errorf("RetryAfter = %s, want > 0", ue.RetryAfter)
	}
	d2.unavailable("cashier")
	if v, _ := e.logins(); v == 0 {
		t.Error("no login was tried during the outage once the refresh was due")
	}

	e.fake.ClearFaults()
	e.fake.ResetCounters()
	e.clk.Advance(ue.RetryAfter)
	d2.waitNewKey("cashier", cashier)
	if v, s := e.logins(); v != 1 || s != 1 {
		t.Errorf("when Erply came back: %d verifyUser, %d switchUser; want 1 and 1", v, s)
	}
	if d2.key("pos") == pos || d2.key("cashier") == cashier {
		t.Error("an expired saved key is served after Erply came back")
	}
}

// An outage that ends before the restored session's refresh is due costs
// one check and no login: the saved key is confirmed and kept.
func TestOutageEndsBeforeRefreshOneCheck(t *testing.T) {
	e := newEnv(t)
	d1 := e.start(e.password1h("pos"))
	pos := d1.key("pos")
	e.clk.Advance(5 * time.Minute)
	d1.shutdown()

	e.fake.Inject(erplytest.Fault{HTTPStatus: 503})
	d2 := e.start(e.password1h("pos"))
	if o := d2.outcome("pos"); o.Result != Unverified {
		t.Fatalf("restore outcome %+v, want unverified", o)
	}
	e.clk.Advance(2 * time.Minute) // checks keep failing
	if n := e.fake.Calls("getSessionKeyInfo"); n < 4 {
		t.Errorf("%d getSessionKeyInfo during 2 min of outage, want the check retried with backoff", n)
	}
	e.fake.ClearFaults()
	e.fake.ResetCounters()
	e.clk.Advance(5 * time.Minute) // the backoff is capped at 5 min
	if n := e.fake.Calls("getSessionKeyInfo"); n != 1 {
		t.Errorf("%d getSessionKeyInfo after Erply came back, want 1", n)
	}
	if v, _ := e.logins(); v != 0 {
		t.Errorf("%d verifyUser after Erply came back, want 0", v)
	}
	if d2.key("pos") != pos {
		t.Error("the confirmed saved key was replaced")
	}
	e.clk.Advance(10 * time.Minute)
	if n := e.fake.TotalCalls(); n != 1 {
		t.Errorf("%d calls in the 10 min after the confirmation, want none", n)
	}
}

// A saved session deleted at Erply while the daemon was down costs exactly
// one login (and its pin one switch), whether Erply answers at start or only later.
func TestSessionDeletedWhileDown(t *testing.T) {
	for _, outage := range []bool{false, true} {
		name := "erply up"
		if outage {
			name = "erply down at start"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			creds := []config.Credential{e.password1h("pos"), e.pin1h("cashier", "pos")}
			d1 := e.start(creds...)
			pos, cashier := d1.key("pos"), d1.key("cashier")
			e.clk.Advance(5 * time.Minute)
			d1.shutdown()
			e.fake.DeleteSession(pos)

			if outage {
				e.fake.Inject(erplytest.Fault{HTTPStatus: 503})
			}
			e.fake.ResetCounters()
			d2 := e.start(creds...)
			if outage {
				if o := d2.outcome("pos"); o.Result != Unverified {
					t.Fatalf("restore outcome %+v, want unverified", o)
				}
				e.clk.Advance(time.Minute)
				e.fake.ClearFaults()
				e.fake.ResetCounters()
				e.clk.Advance(5 * time.Minute)
				d2.waitNewKey("cashier", cashier)
				if got := testutil.ToFloat64(d2.store.m.dead); got != 1 {
					t.Errorf("sessions_restored_dead_total = %v, want 1", got)
				}
			} else {
				if o := d2.outcome("pos"); o.Result != Dead {
					t.Errorf("pos: restore outcome %+v, want dead", o)
				}
				if o := d2.outcome("cashier"); o.Result != Skipped || o.Reason != ReasonParent {
					t.Errorf("cashier: restore outcome %+v, want skipped: %s", o, ReasonParent)
				}
			}
			if v, s := e.logins(); v != 1 || s != 1 {
				t.Errorf("%d verifyUser, %d switchUser; want exactly 1 and 1", v, s)
			}
			if d2.key("pos") == pos {
				t.Error("the deleted key is still served")
			}
			d2.key("cashier")
		})
	}
}

// A credential whose identity changed (username, client code) ignores its
// saved entry and logs in once; an unchanged one beside it is restored.
func TestChangedIdentityIgnoresEntry(t *testing.T) {
	cases := []struct {
		name   string
		change func(e *env, c *config.Credential)
	}{
		{"username", func(e *env, c *config.Credential) {
			e.fake.AddAccount(e.code).AddUser(erplytest.User{Username: "other@demo.example", Password: e.password, UserID: 9})
			c.Username = "other@demo.example"
		}},
		{"client code", func(e *env, c *config.Credential) {
			e.fake.AddAccount("555555").AddUser(erplytest.User{Username: e.user, Password: e.password, UserID: 6})
			c.ClientCode = "555555"
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			d1 := e.start(e.password1h("pos"), e.password1h("office"))
			office := d1.key("office")
			e.clk.Advance(time.Minute)
			d1.shutdown()

			changed := e.password1h("pos")
			tc.change(e, &changed)
			e.fake.ResetCounters()
			d2 := e.start(changed, e.password1h("office"))
			if o := d2.outcome("pos"); o.Result != Skipped || o.Reason != ReasonIdentity {
				t.Errorf("pos: outcome %+v, want skipped: %s", o, ReasonIdentity)
			}
			if !containsAny(d2.report.Findings, "pos") {
				t.Errorf("no finding about pos's foreign entry in %q", d2.report.Findings)
			}
			if n := e.fake.CallsFor(changed.ClientCode, "verifyUser"); n != 1 {
				t.Errorf("%d verifyUser for the changed credential, want 1", n)
			}
			if n := e.fake.Calls("verifyUser"); n != 1 {
				t.Errorf("%d verifyUser in all, want 1 (office restored)", n)
			}
			if d2.key("office") != office {
				t.Error("the unchanged credential was not restored")
			}
		})
	}
}

// Restore's metrics count each outcome under its label.
func TestRestoreMetrics(t *testing.T) {
	e := newEnv(t)
	d1 := e.start(e.password1h("pos"), e.password1h("office"))
	office := d1.key("office")
	e.clk.Advance(time.Minute)
	d1.shutdown()
	e.fake.DeleteSession(office)

	d2 := e.start(e.password1h("pos"), e.password1h("office"), e.password1h("new"))
	want := `
# HELP erply_sessiond_sessions_restored_dead_total Saved sessions Erply reported expired or deleted (1054/1055) when checked; each costs an ordinary login.
# TYPE erply_sessiond_sessions_restored_dead_total counter
erply_sessiond_sessions_restored_dead_total 1
# HELP erply_sessiond_sessions_restored_total Sessions restored from the state file at start, without a login, by what Erply said when asked: valid, or unreachable (served until its saved expiry).
# TYPE erply_sessiond_sessions_restored_total counter
erply_sessiond_sessions_restored_total{check="unreachable"} 0
erply_sessiond_sessions_restored_total{check="valid"} 1
`
	if err := testutil.GatherAndCompare(d2.reg, strings.NewReader(want),
		"erply_sessiond_sessions_restored_total", "erply_sessiond_sessions_restored_dead_total"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(d2.store.m.skipped.WithLabelValues(ReasonMissing)); got != 1 {
		t.Errorf("restore_skipped_total{reason=missing} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(d2.store.m.skipped.WithLabelValues(ReasonIdentity)); got != 0 {
		t.Errorf("restore_skipped_total{reason=identity_changed} = %v, want 0", got)
	}
}

// An entry with no more than the margin left is not checked at all.
func TestEntryInsideMarginNotChecked(t *testing.T) {
	e := newEnv(t)
	d1 := e.start(e.password1h("pos"))
	d1.key("pos")
	d1.shutdown()
	e.clk.Advance(59 * time.Minute) // 60 s left: the margin
	e.fake.ResetCounters()
	d2 := e.start(e.password1h("pos"))
	if o := d2.outcome("pos"); o.Result != Skipped || o.Reason != ReasonExpiring {
		t.Errorf("outcome %+v, want skipped: %s", o, ReasonExpiring)
	}
	if n := e.fake.Calls("getSessionKeyInfo"); n != 0 {
		t.Errorf("%d getSessionKeyInfo, want 0", n)
	}
	if v, _ := e.logins(); v != 1 {
		t.Errorf("%d verifyUser, want 1", v)
	}
}

// A login that got in before the restore (a caller's Get) is left alone.
func TestRestoreLeavesALiveLoginAlone(t *testing.T) {
	e := newEnv(t)
	d1 := e.start(e.password1h("pos"))
	saved := d1.key("pos")
	d1.shutdown()

	st, err := Open(e.dir, Options{Clock: e.clk})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	p, err := pool.New(pool.Options{MethodFor: login.Methods(e.client), Upstream: e.client,
		Credentials: []config.Credential{e.password1h("pos")}, Clock: e.clk, Policy: e.policy})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	live, err := p.Get(t.Context(), "pos")
	if err != nil {
		t.Fatal(err)
	}
	rep := st.Restore(t.Context(), p, e.client, []config.Credential{e.password1h("pos")}, e.policy)
	if o, _ := rep.Outcome("pos"); o.Result != Skipped || o.Reason != ReasonInUse {
		t.Errorf("outcome %+v, want skipped: %s", o, ReasonInUse)
	}
	if now, _ := p.Snapshot("pos"); now.Session.SessionKey != live.Session.SessionKey || now.Session.SessionKey == saved {
		t.Error("the restore replaced the session a login had just made")
	}
}

// With Erply unreachable, a saved expiry measured on a local clock that
// has since gone back cannot be trusted: an ordinary login instead.
func TestUnreachableAfterClockWentBack(t *testing.T) {
	e := newEnv(t)
	e.clk.Advance(time.Hour)
	d1 := e.start(e.password1h("pos"))
	d1.key("pos")
	d1.shutdown()
	e.clk.Set(start.Add(30 * time.Minute)) // before the session was measured
	e.fake.Inject(erplytest.Fault{HTTPStatus: 503})
	d2 := e.start(e.password1h("pos"))
	if o := d2.outcome("pos"); o.Result != Skipped || o.Reason != ReasonClock {
		t.Errorf("outcome %+v, want skipped: %s", o, ReasonClock)
	}
	d2.unavailable("pos")
}

// Close ends the re-checks of sessions restored while Erply was unreachable.
func TestCloseStopsRechecks(t *testing.T) {
	e := newEnv(t)
	d1 := e.start(e.password1h("pos"))
	d1.key("pos")
	d1.shutdown()
	e.fake.Inject(erplytest.Fault{HTTPStatus: 503})
	d2 := e.start(e.password1h("pos"))
	if o := d2.outcome("pos"); o.Result != Unverified {
		t.Fatalf("outcome %+v, want unverified", o)
	}
	if err := d2.store.Close(); err != nil {
		t.Fatal(err)
	}
	e.fake.ResetCounters()
	e.clk.Advance(10 * time.Minute)
	if n := e.fake.Calls("getSessionKeyInfo"); n != 0 {
		t.Errorf("%d checks after Close, want 0", n)
	}
}

func containsAny(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
