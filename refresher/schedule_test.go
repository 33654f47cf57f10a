package refresher_test

import (
	"sync"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/refresher"
)

func TestRetryAt(t *testing.T) {
	for _, tc := range []struct {
		name    string
		wait    time.Duration
		refused bool
		want    time.Duration
	}{
		{"transient waits its backoff", 3 * time.Second, false, 3 * time.Second},
		{"transient long backoff is not polled", 5 * time.Minute, false, 5 * time.Minute},
		{"refused looks at its secret every poll", 4 * time.Minute, true, refresher.SecretPoll},
		{"refused backoff shorter than the poll", 5 * time.Second, true, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := refresher.RetryAt(t0, tc.wait, tc.refused).Sub(t0); got != tc.want {
				t.Fatalf("RetryAt = now+%v, want now+%v", got, tc.want)
			}
		})
	}
}

func TestJWTRenewAt(t *testing.T) {
	p := refresher.Default()
	p.Float64 = fixed(0.5) // no jitter: 0.67 of the way
	sess := t0.Add(time.Hour)
	for _, tc := range []struct {
		name string
		jwts []time.Time
		want time.Duration // after t0; -1 for none
	}{
		{"no JWTs", nil, -1},
		{"unknown expiry", []time.Time{{}}, -1},
		{"JWT outlives the session", []time.Time{sess.Add(time.Minute)}, -1},
		{"JWT expires with the session", []time.Time{sess}, -1},
		{"JWT expires first", []time.Time{t0.Add(30 * time.Minute)}, time.Duration(0.67 * float64(30*time.Minute))},
		{"the earlier of two", []time.Time{t0.Add(30 * time.Minute), t0.Add(15 * time.Minute)}, time.Duration(0.67 * float64(15*time.Minute))},
		{"short JWT keeps a margin", []time.Time{t0.Add(6 * time.Second)}, 4020 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := p.JWTRenewAt(t0, sess, tc.jwts...)
			if tc.want < 0 {
				if !got.IsZero() {
					t.Fatalf("JWTRenewAt = %v, want none", got)
				}
				return
			}
			if d := got.Sub(t0) - tc.want; d < -time.Millisecond || d > time.Millisecond {
				t.Fatalf("JWTRenewAt = now+%v, want now+%v", got.Sub(t0), tc.want)
			}
		})
	}
}

func TestFollowParent(t *testing.T) {
	childExp := t0.Add(time.Hour)
	margin := time.Minute
	for _, tc := range []struct {
		name       string
		parentNext time.Time
		failing    bool
		wantWait   bool
	}{
		{"parent refreshes well before", t0.Add(40 * time.Minute), false, true},
		{"parent refreshes just before the deadline", childExp.Add(-2*margin - time.Second), false, true},
		{"parent refreshes at the deadline", childExp.Add(-2 * margin), false, false},
		{"parent refreshes after the child expires", childExp.Add(time.Minute), false, false},
		{"parent is failing", t0.Add(40 * time.Minute), true, false},
		{"parent has no refresh scheduled", time.Time{}, false, false},
		{"parent's refresh is already due", t0, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at, wait := refresher.FollowParent(t0, childExp, margin, tc.parentNext, tc.failing)
			if wait != tc.wantWait {
				t.Fatalf("FollowParent wait = %v, want %v", wait, tc.wantWait)
			}
			if wait && !at.Equal(tc.parentNext.Add(time.Second)) {
				t.Fatalf("look again at %v, want a second after the parent's refresh %v", at, tc.parentNext)
			}
		})
	}
}

func TestExpireAt(t *testing.T) {
	p := refresher.Default()
	if got := p.ExpireAt(t0.Add(time.Hour), time.Hour); !got.Equal(t0.Add(59 * time.Minute)) {
		t.Fatalf("ExpireAt 1h = %v, want a minute before expiry", got)
	}
	if got := p.ExpireAt(t0.Add(6*time.Second), 6*time.Second); !got.Equal(t0.Add(5 * time.Second)) {
		t.Fatalf("ExpireAt 6s = %v, want a second before expiry", got)
	}
}

// recorder is a Target that notes each event with the clock's time.
type recorder struct {
	clk    *clock.Fake
	mu     sync.Mutex
	events []string
	onFire func(ev string)
}

func (r *recorder) note(ev string) {
	r.mu.Lock()
	r.events = append(r.events, ev+"@"+r.clk.Now().Sub(t0).String())
	f := r.onFire
	r.mu.Unlock()
	if f != nil {
		f(ev)
	}
}

func (r *recorder) Refresh()  { r.note("refresh") }
func (r *recorder) Expire()   { r.note("expire") }
func (r *recorder) RenewJWT() { r.note("jwt") }

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestTimerFiresEachEventAtItsTime(t *testing.T) {
	clk := clock.NewFake(t0)
	r := &recorder{clk: clk}
	tm := refresher.NewTimer(clk, r)
	tm.Set(refresher.Refresh, t0.Add(40*time.Minute))
	tm.Set(refresher.Expire, t0.Add(59*time.Minute))
	tm.Set(refresher.RenewJWT, t0.Add(10*time.Minute))
	if clk.Pending() != 1 {
		t.Fatalf("%d clock timers armed, want one for all three events", clk.Pending())
	}
	clk.Advance(2 * time.Hour)
	want := []string{"jwt@10m0s", "refresh@40m0s", "expire@59m0s"}
	if got := r.got(); !equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if clk.Pending() != 0 {
		t.Fatalf("%d clock timers left armed after every event fired", clk.Pending())
	}
}

func TestTimerResetAndCancel(t *testing.T) {
	clk := clock.NewFake(t0)
	r := &recorder{clk: clk}
	tm := refresher.NewTimer(clk, r)
	tm.Set(refresher.Refresh, t0.Add(time.Minute))
	tm.Set(refresher.Refresh, t0.Add(3*time.Minute)) // moved later: fires once, at 3m
	tm.Set(refresher.RenewJWT, t0.Add(2*time.Minute))
	tm.Set(refresher.RenewJWT, time.Time{}) // cancelled
	if got := tm.Due(refresher.Refresh); !got.Equal(t0.Add(3 * time.Minute)) {
		t.Fatalf("Due(Refresh) = %v", got)
	}
	clk.Advance(10 * time.Minute)
	if got, want := r.got(), []string{"refresh@3m0s"}; !equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if !tm.Due(refresher.Refresh).IsZero() {
		t.Fatal("a fired event is still reported due")
	}
}

func TestTimerEventRearmsItselfFromItsCallback(t *testing.T) {
	clk := clock.NewFake(t0)
	r := &recorder{clk: clk}
	tm := refresher.NewTimer(clk, r)
	n := 0
	r.onFire = func(ev string) {
		if n++; n < 3 {
			tm.Set(refresher.Refresh, clk.Now().Add(time.Minute))
		}
	}
	tm.Set(refresher.Refresh, t0.Add(time.Minute))
	clk.Advance(time.Hour)
	if got, want := r.got(), []string{"refresh@1m0s", "refresh@2m0s", "refresh@3m0s"}; !equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

func TestTimerStopIsFinal(t *testing.T) {
	clk := clock.NewFake(t0)
	r := &recorder{clk: clk}
	tm := refresher.NewTimer(clk, r)
	tm.Set(refresher.Expire, t0.Add(time.Minute))
	tm.Stop()
	tm.Set(refresher.Refresh, t0.Add(2*time.Minute))
	clk.Advance(time.Hour)
	if got := r.got(); len(got) != 0 {
		t.Fatalf("events after Stop: %v", got)
	}
	if clk.Pending() != 0 {
		t.Fatalf("%d clock timers armed after Stop", clk.Pending())
	}
}

func TestTimerRealClockPastTimeFiresAtOnce(t *testing.T) {
	done := make(chan struct{})
	tm := refresher.NewTimer(clock.Real{}, targetFunc(func() { close(done) }))
	tm.Set(refresher.Refresh, time.Now().Add(-time.Second))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("an event set in the past did not fire")
	}
	tm.Stop()
}

type targetFunc func()

func (f targetFunc) Refresh()  { f() }
func (f targetFunc) Expire()   {}
func (f targetFunc) RenewJWT() {}
