package pool_test

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/pool"
)

// Issue 16 item 8: 200 invalidations of the current key in 18 s made 200
// logins (and 200 PIN switches). Past a burst of 2 (refilled at one per
// 30 s) a reported key is checked with getSessionKeyInfo first: one Erply
// still accepts is answered with the current session, without a login.
func TestForcedLoginsAreBoundedWhileTheKeyIsAlive(t *testing.T) {
	e := newEnv(t)
	p := e.start(e.password1h("pos"), e.pin1h("cashier", "pos"))
	e.open()
	e.settle()
	logins, switches := e.fake.Calls("verifyUser"), e.fake.Calls("switchUser")
	for range 200 {
		e.clk.Advance(90 * time.Millisecond)
		cur := e.get("pos")
		s, err := p.Invalidate(context.Background(), "pos", cur.Session.SessionKey)
		if err != nil {
			t.Fatalf("Invalidate of a live key: %v", err)
		}
		if !e.fake.SessionValid(s.Session.SessionKey) {
			t.Fatal("Invalidate answered a dead key")
		}
		e.settle()
	}
	nLogins, nSwitches := e.fake.Calls("verifyUser")-logins, e.fake.Calls("switchUser")-switches
	checks := e.fake.Calls("getSessionKeyInfo")
	t.Logf("200 invalidations of a live key in 18 s: %d logins, %d PIN switches, %d getSessionKeyInfo", nLogins, nSwitches, checks)
	if nLogins > pool.ForcedBurst+1 || nSwitches > nLogins {
		t.Fatalf("%d logins and %d PIN switches for 200 reports of a live key in 18 s, want at most %d (the burst and one refill)", nLogins, nSwitches, pool.ForcedBurst+1)
	}
	// One check per 5 s of reports at most: Erply's answer is reused.
	if checks > 6 {
		t.Fatalf("%d getSessionKeyInfo for 18 s of reports, want at most one per 5 s", checks)
	}
}

// A persistent 1054 on fresh keys (Erply misbehaving: getSessionKeyInfo
// refuses every key): 101 logins for 100 reports before. Now callers get
// 503 with Retry-After and the reason, and logins stay within the bound.
func TestForcedLoginsAreBoundedWhenErplyRefusesFreshKeys(t *testing.T) {
	e := newEnv(t)
	p := e.start(e.password1h("pos"))
	e.open()
	e.fake.SetHandler("getSessionKeyInfo", func(url.Values) (int, []byte) {
		return 200, []byte(`{"status":{"request":"getSessionKeyInfo","requestUnixTime":` + strconv.FormatInt(e.clk.Now().Unix(), 10) +
			`,"responseStatus":"error","errorCode":1054},"records":[]}`)
	})
	logins := e.fake.Calls("verifyUser")
	unavailable := 0
	for range 600 { // a minute of reports, one every 100 ms
		e.clk.Advance(100 * time.Millisecond)
		cur, ok := p.Snapshot("pos")
		if !ok || cur.Session == nil {
			t.Fatal("no session")
		}
		_, err := p.Invalidate(context.Background(), "pos", cur.Session.SessionKey)
		var ue *pool.UnavailableError
		switch {
		case err == nil:
		case errors.As(err, &ue) && ue.RetryAfter > 0 && ue.RetryAfter <= pool.ForcedEvery && strings.Contains(err.Error(), "less than 30 s ago"):
			unavailable++
		default:
			t.Fatalf("Invalidate: %v, want a session or 503 with Retry-After and the reason", err)
		}
	}
	n, checks := e.fake.Calls("verifyUser")-logins, e.fake.Calls("getSessionKeyInfo")
	t.Logf("600 reports of fresh keys Erply refuses, in 60 s: %d logins, %d answered 503, %d getSessionKeyInfo", n, unavailable, checks)
	if checks > 60/5+2 {
		t.Fatalf("%d getSessionKeyInfo in 60 s, want at most one per 5 s", checks)
	}
	// The burst, then one login per 30 s from the refill and one from the
	// age rule: 2 + 2×2 in a minute.
	if n > pool.ForcedBurst+4 || unavailable < 550 {
		t.Fatalf("%d logins and %d 503s for 600 reports in 60 s, want at most %d logins", n, unavailable, pool.ForcedBurst+4)
	}
}

// A key Erply deleted right after the bound was spent gets a login within
// 30 s, never a key that stays dead.
func TestForcedLoginPastTheBoundForADeletedKey(t *testing.T) {
	e := newEnv(t)
	p := e.start(e.password1h("pos"))
	e.open()
	for range pool.ForcedBurst { // spend the burst
		cur := e.get("pos")
		if _, err := p.Invalidate(context.Background(), "pos", cur.Session.SessionKey); err != nil {
			t.Fatal(err)
		}
	}
	e.clk.Advance(20 * time.Second)
	k := e.get("pos").Session.SessionKey
	e.fake.DeleteSession(k)
	logins := e.fake.Calls("verifyUser")
	_, err := p.Invalidate(context.Background(), "pos", k)
	var ue *pool.UnavailableError
	if !errors.As(err, &ue) || ue.RetryAfter <= 0 || ue.RetryAfter > 10*time.Second {
		t.Fatalf("Invalidate of a deleted key 20 s old, past the bound: %v, want 503 with Retry-After of the 10 s left", err)
	}
	e.clk.Advance(ue.RetryAfter)
	s, err := p.Invalidate(context.Background(), "pos", k)
	if err != nil || s.Session.SessionKey == k || !e.fake.SessionValid(s.Session.SessionKey) {
		t.Fatalf("Invalidate after Retry-After: %v", err)
	}
	if n := e.fake.Calls("verifyUser") - logins; n != 1 {
		t.Fatalf("%d logins, want 1", n)
	}
}
