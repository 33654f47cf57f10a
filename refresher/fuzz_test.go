package refresher_test

import (
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/refresher"
)

// FuzzSchedule drives the schedule with arbitrary lifetimes, JWT expiries,
// jitter and clock offsets and checks the bounds that keep the daemon from
// spinning: a refresh never sooner than a third of the lifetime nor after
// expiry; a JWT renewal, if any, only for a JWT ending at least a second
// before its session, never sooner than a third of the JWT's remaining
// life, and before the JWT ends.
func FuzzSchedule(f *testing.F) {
	f.Add(int64(time.Hour), int64(40*time.Minute), int64(0), 0.5)
	f.Add(int64(6*time.Second), int64(5*time.Second), int64(time.Second), 0.99)
	f.Add(int64(time.Second), int64(900*time.Millisecond), int64(0), 0.0)
	f.Add(int64(5*time.Second), int64(4200*time.Millisecond), int64(300*time.Millisecond), 0.3)
	f.Add(int64(1), int64(1), int64(0), 0.5)
	f.Add(int64(time.Hour), int64(-time.Second), int64(time.Minute), 0.5)
	f.Fuzz(func(t *testing.T, lifetime, jwtLeft, elapsed int64, r float64) {
		if lifetime <= 0 || lifetime > int64(48*time.Hour) || elapsed < 0 || elapsed > lifetime || r < 0 || r >= 1 {
			t.Skip()
		}
		p := refresher.Default()
		p.Float64 = func() float64 { return r }
		obtained := t0
		expires := obtained.Add(time.Duration(lifetime))
		at := p.RefreshAt(obtained, expires)
		if at.Before(obtained.Add(time.Duration(lifetime) / 3)) {
			t.Fatalf("refresh at %v of a %v session: sooner than a third", at.Sub(obtained), time.Duration(lifetime))
		}
		if at.After(expires) {
			t.Fatalf("refresh at %v of a %v session: after expiry", at.Sub(obtained), time.Duration(lifetime))
		}
		now := obtained.Add(time.Duration(elapsed))
		jwtExp := now.Add(time.Duration(jwtLeft))
		due := p.JWTRenewAt(now, expires, jwtExp)
		if due.IsZero() {
			return
		}
		if !jwtExp.Before(expires.Add(-refresher.MinMargin)) {
			t.Fatalf("renewal scheduled for a JWT ending %v before its session (less than a second)", expires.Sub(jwtExp))
		}
		left := jwtExp.Sub(now)
		if left <= 0 {
			if !due.Equal(now) {
				t.Fatalf("an expired JWT renewed at now+%v, want now", due.Sub(now))
			}
			return
		}
		if due.Before(now.Add(left/3)) || due.After(jwtExp) {
			t.Fatalf("renewal at now+%v for a JWT with %v left", due.Sub(now), left)
		}
	})
}

func TestJWTAlreadyExpiredIsRenewedNow(t *testing.T) {
	p := refresher.Default()
	due := p.JWTRenewAt(t0, t0.Add(time.Hour), t0.Add(-time.Second))
	if !due.Equal(t0) {
		t.Fatalf("a JWT that has already expired is renewed at now+%v, want now", due.Sub(t0))
	}
}
