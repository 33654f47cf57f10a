package refresher

import (
	"sync"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
)

// Target is the credential a Timer drives; the pool implements it for each
// of its credentials. The calls come from the clock's goroutines (or from
// Advance on a fake clock); they may overlap (an expiry while a refresh's
// login is still running) and may set the Timer again.
type Target interface {
	// Refresh is called at the refresh point, or at the retry point after a
	// failed login.
	Refresh()
	// Expire is called when the session enters its safety margin.
	Expire()
	// RenewJWT is called when a JWT of the session is due for renewal.
	RenewJWT()
}

// Event is one duty of a Timer.
type Event int

// The events a Timer fires, in the order they are delivered when several
// fall due together.
const (
	Expire Event = iota
	RenewJWT
	Refresh
	numEvents
)

// Timer is one credential's timers — refresh point, expiry, JWT renewal —
// on a single clock timer armed at the earliest of them. It is safe for
// concurrent use; the zero value is not: make one with NewTimer.
type Timer struct {
	clk    clock.Clock
	target Target

	mu      sync.Mutex
	due     [numEvents]time.Time
	armed   clock.Timer
	armedAt time.Time
	gen     uint64 // which arming a callback belongs to: a stale one does nothing
	stopped bool
}

// NewTimer returns a Timer that calls target's methods as their times come.
func NewTimer(clk clock.Clock, target Target) *Timer {
	return &Timer{clk: clk, target: target}
}

// Set schedules ev at at, replacing its previous time; the zero time
// cancels it. A time already past fires at once. Set after Stop does nothing.
func (t *Timer) Set(ev Event, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.due[ev] = at
	t.armLocked()
}

// Due returns when ev is scheduled (the zero time: not scheduled).
func (t *Timer) Due(ev Event) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.due[ev]
}

// Stop cancels every event for good. A delivery already under way finishes.
func (t *Timer) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	t.due = [numEvents]time.Time{}
	if t.armed != nil {
		t.armed.Stop()
		t.armed = nil
	}
	t.gen++
}

func (t *Timer) armLocked() {
	var next time.Time
	for _, d := range t.due {
		if !d.IsZero() && (next.IsZero() || d.Before(next)) {
			next = d
		}
	}
	if t.armed != nil {
		if next.Equal(t.armedAt) {
			return
		}
		t.armed.Stop()
		t.armed = nil
	}
	t.gen++
	t.armedAt = next
	if next.IsZero() {
		return
	}
	gen := t.gen
	t.armed = t.clk.AfterFunc(next.Sub(t.clk.Now()), func() { t.fire(gen) })
}

func (t *Timer) fire(gen uint64) {
	t.mu.Lock()
	if t.stopped || gen != t.gen {
		t.mu.Unlock()
		return
	}
	now := t.clk.Now()
	var fired [numEvents]bool
	for ev, d := range t.due {
		if !d.IsZero() && !d.After(now) {
			fired[ev] = true
			t.due[ev] = time.Time{}
		}
	}
	t.armed = nil
	t.armLocked()
	t.mu.Unlock()
	if fired[Expire] {
		t.target.Expire()
	}
	if fired[RenewJWT] {
		t.target.RenewJWT()
	}
	if fired[Refresh] {
		t.target.Refresh()
	}
}
