// Package clock abstracts wall-clock time so that a day of session refreshes runs in a test in milliseconds.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock is the time source every time-dependent part of the daemon uses.
type Clock interface {
	// Now returns the current wall-clock time.
	Now() time.Time
	// AfterFunc calls f in its own goroutine (Real) or synchronously from
	// Advance (Fake) once d has elapsed.
	AfterFunc(d time.Duration, f func()) Timer
	// NewTimer returns a Timer whose channel receives the time once d has elapsed.
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer the daemon uses.
type Timer interface {
	// C is nil for timers made by AfterFunc.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it was pending.
	Stop() bool
}

// Real is the system clock. The zero value is ready to use.
type Real struct{}

var _ Clock = Real{}

// Now returns time.Now().
func (Real) Now() time.Time { return time.Now() }

// AfterFunc wraps time.AfterFunc.
func (Real) AfterFunc(d time.Duration, f func()) Timer { return realTimer{t: time.AfterFunc(d, f)} }

// NewTimer wraps time.NewTimer.
func (Real) NewTimer(d time.Duration) Timer { return realTimer{t: time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }
func (r realTimer) Stop() bool          { return r.t.Stop() }

// Fake is a manually advanced clock. Timers fire, in deadline order, only
// from Advance or Set; AfterFunc callbacks run synchronously in the caller of
// Advance, without the clock's lock held, so they may use the clock. It is safe
// for concurrent use.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	seq    int
	timers []*fakeTimer
	// waiters are woken whenever a timer is added, for BlockUntil.
	changed chan struct{}
}

var _ Clock = (*Fake)(nil)

// NewFake returns a fake clock reading start.
func NewFake(start time.Time) *Fake {
	return &Fake{now: start, changed: make(chan struct{})}
}

type fakeTimer struct {
	clk  *Fake
	when time.Time
	seq  int
	f    func()
	c    chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	for i, o := range t.clk.timers {
		if o == t {
			t.clk.timers = append(t.clk.timers[:i], t.clk.timers[i+1:]...)
			return true
		}
	}
	return false
}

// Now returns the fake time.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc schedules f to run from Advance once d has elapsed on the fake clock.
func (c *Fake) AfterFunc(d time.Duration, f func()) Timer {
	return c.add(d, f, nil)
}

// NewTimer returns a timer whose channel (buffered) receives when Advance passes its deadline.
func (c *Fake) NewTimer(d time.Duration) Timer {
	return c.add(d, nil, make(chan time.Time, 1))
}

func (c *Fake) add(d time.Duration, f func(), ch chan time.Time) *fakeTimer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &fakeTimer{clk: c, when: c.now.Add(d), seq: c.seq, f: f, c: ch}
	c.timers = append(c.timers, t)
	close(c.changed)
	c.changed = make(chan struct{})
	return t
}

// Advance moves the clock forward by d, firing every timer that falls due on
// the way, each with the clock reading its deadline.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	target := c.now.Add(d)
	c.mu.Unlock()
	c.Set(target)
}

// Set moves the clock to t (forward or backward) and fires the timers due by
// then. Moving backward fires nothing.
func (c *Fake) Set(t time.Time) {
	for {
		c.mu.Lock()
		sort.SliceStable(c.timers, func(i, j int) bool {
			if c.timers[i].when.Equal(c.timers[j].when) {
				return c.timers[i].seq < c.timers[j].seq
			}
			return c.timers[i].when.Before(c.timers[j].when)
		})
		if len(c.timers) == 0 || c.timers[0].when.After(t) {
			c.now = t
			c.mu.Unlock()
			return
		}
		next := c.timers[0]
		c.timers = c.timers[1:]
		if next.when.After(c.now) {
			c.now = next.when
		}
		now := c.now
		c.mu.Unlock()
		if next.f != nil {
			next.f()
		} else {
			select {
			case next.c <- now:
			default:
			}
		}
	}
}

// Pending reports how many timers are waiting to fire.
func (c *Fake) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Changed returns a channel closed the next time a timer is added, so tests
// can wait for a goroutine to arm its timer without sleeping.
func (c *Fake) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}
