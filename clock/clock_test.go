package clock_test

import (
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/clock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// Timers fire from Advance in deadline order (ties in creation order), each
// seeing the clock at its own deadline; a callback may arm a timer that then
// fires within the same Advance.
func TestFakeFiresInOrder(t *testing.T) {
	c := clock.NewFake(t0)
	var got []string
	at := func(name string) func() {
		return func() { got = append(got, name+"@"+c.Now().Sub(t0).String()) }
	}
	c.AfterFunc(3*time.Second, at("c"))
	c.AfterFunc(time.Second, func() {
		at("a")()
		c.AfterFunc(1500*time.Millisecond, at("a+1.5s"))
	})
	c.AfterFunc(2*time.Second, at("b1"))
	c.AfterFunc(2*time.Second, at("b2"))
	c.AfterFunc(10*time.Second, at("late"))
	c.Advance(5 * time.Second)
	want := []string{"a@1s", "b1@2s", "b2@2s", "a+1.5s@2.5s", "c@3s"}
	if !slices.Equal(got, want) {
		t.Fatalf("fired %v, want %v", got, want)
	}
	if now := c.Now(); !now.Equal(t0.Add(5 * time.Second)) {
		t.Fatalf("Now = %v after Advance(5s)", now)
	}
	if c.Pending() != 1 {
		t.Fatalf("Pending = %d, want 1 (the 10 s timer)", c.Pending())
	}
}

func TestFakeStopAndChannelTimers(t *testing.T) {
	c := clock.NewFake(t0)
	fired := false
	stopped := c.AfterFunc(time.Second, func() { fired = true })
	if !stopped.Stop() {
		t.Fatal("Stop of a pending timer = false")
	}
	tm := c.NewTimer(2 * time.Second)
	select {
	case <-tm.C():
		t.Fatal("timer fired before Advance")
	default:
	}
	c.Advance(2 * time.Second)
	if fired {
		t.Fatal("a stopped timer fired")
	}
	select {
	case when := <-tm.C():
		if !when.Equal(t0.Add(2 * time.Second)) {
			t.Fatalf("timer sent %v", when)
		}
	default:
		t.Fatal("channel timer did not fire")
	}
	if tm.Stop() {
		t.Fatal("Stop of a fired timer = true")
	}
}

func TestFakeSetBackwardFiresNothing(t *testing.T) {
	c := clock.NewFake(t0)
	n := 0
	c.AfterFunc(time.Second, func() { n++ })
	c.Set(t0.Add(-time.Hour))
	if n != 0 || !c.Now().Equal(t0.Add(-time.Hour)) {
		t.Fatalf("after Set backward: %d fired, Now %v", n, c.Now())
	}
	c.Set(t0.Add(time.Second))
	if n != 1 {
		t.Fatalf("after Set forward past the deadline: %d fired, want 1", n)
	}
}

// Changed lets a test wait, without sleeping, for another goroutine to arm a timer.
func TestFakeChanged(t *testing.T) {
	c := clock.NewFake(t0)
	changed := c.Changed()
	armed := make(chan clock.Timer)
	go func() { armed <- c.NewTimer(time.Minute) }()
	<-changed
	tm := <-armed
	c.Advance(time.Minute)
	<-tm.C()
}

func TestRealTimers(t *testing.T) {
	var c clock.Clock = clock.Real{}
	done := make(chan struct{})
	c.AfterFunc(time.Millisecond, func() { close(done) })
	<-done
	tm := c.NewTimer(time.Millisecond)
	<-tm.C()
	if c.Now().IsZero() {
		t.Fatal("Real.Now is zero")
	}
	if c.AfterFunc(time.Hour, func() {}).Stop() != true {
		t.Fatal("Stop of a pending real timer = false")
	}
}
