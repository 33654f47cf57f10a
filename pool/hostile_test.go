package pool_test

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"testing"
	"time"
)

// verifyUserReply is a verifyUser answer claiming sessionLength length
// (raw JSON number) for a key the fake never issued.
func (e *env) verifyUserReply(length string) func(url.Values) (int, []byte) {
	n := 0
	return func(url.Values) (int, []byte) {
		n++
		return 200, []byte(fmt.Sprintf(`{"status":{"request":"verifyUser","requestUnixTime":%d,"responseStatus":"ok","errorCode":0,"recordsTotal":1,"recordsInResponse":1},`+
			`"records":[{"userID":"6","userName":"manager","sessionKey":"hostile-%d","sessionLength":%s}]}`, e.clk.Now().Unix(), n, length))
	}
}

// A reply whose sessionLength overflows a time.Duration (1e12 s: an expiry
// in 2149; 18446744074 s: wraps to 290 ms) is trusted only up to what was
// asked: the session is refreshed on schedule, not never nor without pause.
func TestOverflowingSessionLengthIsClampedToWhatWasAsked(t *testing.T) {
	for _, length := range []string{"1000000000000", "18446744074", "86401"} {
		t.Run(length, func(t *testing.T) {
			e := newEnv(t)
			p := e.start(e.password1h("pos"))
			e.fake.SetHandler("verifyUser", e.verifyUserReply(length))
			e.open()
			s, ok := p.Snapshot("pos")
			if !ok || s.Session == nil {
				t.Fatal("no session")
			}
			if got := s.ExpiresAt.Sub(e.clk.Now()); got != time.Hour {
				t.Fatalf("lifetime trusted = %v, want the hour asked for", got)
			}
			for range 4 * 60 {
				e.clk.Advance(30 * time.Second)
				e.settle()
			}
			// Two hours of 1 h sessions refreshed at ~40 min: 4 or 5 logins.
			if n := e.fake.Calls("verifyUser"); n < 3 || n > 6 {
				t.Fatalf("%d logins in two hours, want about 4", n)
			}
		})
	}
}

// Erply granting far less than asked (1 s): callers asking all the time
// make at most one login per third of a second, not one per call.
func TestShortGrantedSessionsDoNotSpin(t *testing.T) {
	e := newEnv(t)
	p := e.start(e.password1h("pos"))
	e.fake.SetHandler("verifyUser", e.verifyUserReply("1"))
	e.open()
	for range 600 { // a minute of callers every 100 ms
		e.clk.Advance(100 * time.Millisecond)
		_, _ = p.Get(context.Background(), "pos")
		e.settle()
	}
	n := e.fake.Calls("verifyUser")
	t.Logf("1 s sessions, a Get every 100 ms for a minute: %d logins", n)
	if n > 181 {
		t.Fatalf("%d logins in 60 s of 1 s sessions, want at most one per third of a second (181)", n)
	}
}

// Five-second sessions whose JWTs end with them (whole-second exp just
// before the sub-second expiry): no renewal at all, and logins on schedule.
func TestFiveSecondSessionsWithJWTsDoNotSpin(t *testing.T) {
	e := newEnv(t)
	c := e.password1h("pos")
	c.SessionLength = 5
	e.fake.SetJWTLifetime(5 * time.Second)
	e.start(c)
	e.open()
	for range 600 {
		e.clk.Advance(100 * time.Millisecond)
		e.get("pos")
		e.settle()
	}
	logins, jwts := e.fake.Calls("verifyUser"), e.fake.Calls("getJwtToken")
	t.Logf("5 s sessions for a minute: %d logins, %d getJwtToken", logins, jwts)
	if logins > 20 || jwts > logins {
		t.Fatalf("%d logins and %d JWT renewals in 60 s of 5 s sessions: want ≤ 20 logins (one per ~3.3 s) and at most one renewal per JWT", logins, jwts)
	}
}

// A renewal that brings back a JWT no newer than the one held is not
// repeated: one getJwtToken per session, not a loop.
func TestRenewalReturningTheSameJWTIsNotRepeated(t *testing.T) {
	e := newEnv(t)
	e.fake.SetJWTLifetime(10 * time.Minute)
	p := e.start(e.password1h("pos"))
	e.open()
	s, _ := p.Snapshot("pos")
	held := s.Session.Token
	e.fake.SetHandler("getJwtToken", func(url.Values) (int, []byte) {
		return 200, []byte(`{"status":{"request":"getJwtToken","requestUnixTime":` + strconv.FormatInt(e.clk.Now().Unix(), 10) +
			`,"responseStatus":"ok","errorCode":0},"records":{"token":"` + held + `"}}`)
	})
	for range 30 { // 30 minutes: past the JWT's expiry, before the session's refresh
		e.clk.Advance(time.Minute)
		e.settle()
	}
	if n := e.fake.Calls("getJwtToken"); n != 1 {
		t.Fatalf("%d getJwtToken calls for one session whose renewal returns the same JWT, want 1", n)
	}
}

// A pin whose PIN was refused stays in its backoff when its parent gets a
// new session: ten parent invalidations by a local caller make no switchUser.
func TestRefusedPINStaysInBackoffThroughParentRefreshes(t *testing.T) {
	e := newEnv(t)
	cashier := e.pin1h("cashier", "pos")
	cashier.PIN.Value = "0000"
	p := e.start(e.password1h("pos"), cashier)
	e.open()
	e.settle()
	switches := e.fake.Calls("switchUser")
	if switches != 1 {
		t.Fatalf("%d switchUser at start, want 1 (refused)", switches)
	}
	for range 10 {
		s := e.get("pos")
		if _, err := p.Invalidate(context.Background(), "pos", s.Session.SessionKey); err != nil {
			t.Fatal(err)
		}
		e.settle()
		e.clk.Advance(time.Second)
	}
	if n := e.fake.Calls("switchUser") - switches; n != 0 {
		t.Fatalf("%d refused switchUser retried through 10 parent refreshes, want 0 within the backoff", n)
	}
	if e.fake.Blocked(e.code, "cashier@demo.example") {
		t.Fatal("the cashier got blocked")
	}
}
