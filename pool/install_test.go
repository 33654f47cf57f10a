package pool_test

import (
	"context"
	"github.com/erply-sessiond/erply-sessiond/config"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// A session made elsewhere (restored, adopted, changePassword's) goes in
// through the same step as a login: served at once, refreshed on its own
// schedule, the pin on it switches again, and it is not counted as a login.
func TestInstallFromElsewhere(t *testing.T) {
	e := newEnv(t)
	p := e.start(e.password1h("pos"), e.pin1h("cashier", "pos"))
	e.open()
	first := e.get("pos")
	if first.Logins != 1 {
		t.Fatalf("Logins after the first login = %d, want 1", first.Logins)
	}
	if lt := first.RefreshAt.Sub(e.clk.Now()); lt < 37*time.Minute || lt > 44*time.Minute {
		t.Fatalf("RefreshAt is %v after login, want about two thirds of the hour", lt)
	}
	cashierBefore := e.get("cashier").Session.SessionKey

	// Another process logged the same user in; its session is handed over.
	other := upstream.New(upstream.Options{})
	t.Cleanup(other.CloseIdleConnections)
	sess, err := other.VerifyUser(context.Background(), upstream.Account{ClientCode: e.code, APIURL: e.fake.APIURL()}, e.user, e.password, 3600)
	if err != nil {
		t.Fatal(err)
	}
	verifies := e.fake.Calls("verifyUser")
	s, err := p.Install("pos", pool.Grant{Session: sess}, "restored")
	if err != nil {
		t.Fatal(err)
	}
	e.settle()
	if got := e.get("pos"); got.Session.SessionKey != sess.SessionKey || got.Logins != 1 || s.State != pool.StateOK {
		t.Fatalf("after Install: key %s (want the installed %s), Logins %d (want still 1), state %s",
			pool.Fingerprint(got.Session.SessionKey), pool.Fingerprint(sess.SessionKey), got.Logins, s.State)
	}
	if got := e.get("cashier").Session.SessionKey; got == cashierBefore {
		t.Fatal("the pin did not switch again on its parent's installed session")
	}
	if n := e.fake.Calls("verifyUser"); n != verifies {
		t.Fatalf("Install made %d logins, want none", n-verifies)
	}
	// Its refresh point is its own: two thirds of its hour from now.
	e.clk.Advance(35 * time.Minute)
	e.settle()
	if n := e.fake.Calls("verifyUser"); n != verifies {
		t.Fatalf("refreshed %d times before the installed session's refresh point", n-verifies)
	}
	e.clk.Advance(10 * time.Minute)
	e.settle()
	if got := e.get("pos"); got.Session.SessionKey == sess.SessionKey || got.Logins != 2 {
		t.Fatalf("the installed session was not refreshed at its refresh point (Logins %d)", got.Logins)
	}
}

func TestInstallRefusesWhatCannotBeServed(t *testing.T) {
	e := newEnv(t)
	p := e.start(e.password1h("pos"))
	e.open()
	now := e.clk.Now()
	for _, tc := range []struct {
		name string
		g    pool.Grant
	}{
		{"no session", pool.Grant{}},
		{"no key", pool.Grant{Session: &upstream.Session{SessionLength: 3600}}},
		{"no lifetime", pool.Grant{Session: &upstream.Session{SessionKey: "k"}}},
		{"inside the margin", pool.Grant{Session: &upstream.Session{SessionKey: "k", SessionLength: 3600}, Obtained: now.Add(-time.Hour), ExpiresAt: now.Add(30 * time.Second)}},
		{"already expired", pool.Grant{Session: &upstream.Session{SessionKey: "k", SessionLength: 3600}, Obtained: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.get("pos").Session.SessionKey
			if _, err := p.Install("pos", tc.g, "test"); err == nil {
				t.Fatal("Install accepted it")
			}
			if got := e.get("pos").Session.SessionKey; got != before {
				t.Fatal("a refused Install changed the served key")
			}
		})
	}
	if _, err := p.Install("nobody", pool.Grant{Session: &upstream.Session{SessionKey: "k", SessionLength: 60}}, "test"); err == nil {
		t.Fatal("Install for an unknown credential succeeded")
	}
}

// A credential removed by a reload takes its metric series with it.
func TestRemovedCredentialLeavesNoSeries(t *testing.T) {
	e := newEnv(t)
	pos, gone := e.password1h("pos"), e.password1h("gone")
	p := e.start(pos, gone)
	e.open()
	p.Update([]config.Credential{pos})
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "credential" && l.GetValue() == "gone" {
					t.Fatalf("%s still has a series for the removed credential", mf.GetName())
				}
			}
		}
	}
}
