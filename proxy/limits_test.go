package proxy

import (
	"testing"
	"time"
)

func TestLimiterPauseOnlyExtends(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 8, 20, 0, 0, time.UTC)
	var l limiter
	steps := []struct {
		at        time.Duration // after t0
		d         time.Duration
		why       pauseReason
		wantAdded time.Duration
		wantEnd   time.Duration // after t0
	}{
		{0, 40 * time.Minute, pauseQuota, 40 * time.Minute, 40 * time.Minute},
		{time.Minute, 39 * time.Minute, pauseQuota, 0, 40 * time.Minute},       // a second 1002 of the same hour
		{time.Minute, 10 * time.Second, pauseRateLimited, 0, 40 * time.Minute}, // a shorter 429 does not shorten it
		{time.Minute, 60 * time.Minute, pauseRateLimited, 21 * time.Minute, 61 * time.Minute},
		{2 * time.Hour, 10 * time.Second, pauseRateLimited, 10 * time.Second, 2*time.Hour + 10*time.Second}, // after it ended: counts from now
	}
	for i, s := range steps {
		added, until := l.pause(t0.Add(s.at), s.d, s.why)
		if added != s.wantAdded || !until.Equal(t0.Add(s.wantEnd)) {
			t.Errorf("step %d: added %v until +%v, want %v until +%v", i, added, until.Sub(t0), s.wantAdded, s.wantEnd)
		}
	}
	if left, why := l.paused(t0.Add(2*time.Hour + 5*time.Second)); left != 5*time.Second || why != pauseRateLimited {
		t.Errorf("paused: %v %v", left, why)
	}
	if left, _ := l.paused(t0.Add(2*time.Hour + 10*time.Second)); left != 0 {
		t.Errorf("still paused at the end: %v", left)
	}
}
