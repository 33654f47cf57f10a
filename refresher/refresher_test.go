package refresher_test

import (
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func fixed(v float64) func() float64 { return func() float64 { return v } }

var t0 = time.Date(2026, 11, 23, 10, 17, 0, 0, time.UTC)

func TestRefreshAt(t *testing.T) {
	p := refresher.Default()
	tests := []struct {
		name     string
		rand     float64
		lifetime time.Duration
		want     time.Duration // after obtained
	}{
		{"one hour, no jitter", 0.5, time.Hour, time.Duration(0.67 * float64(time.Hour))},
		{"one hour, earliest jitter", 0, time.Hour, time.Duration(0.62 * float64(time.Hour))},
		{"one hour, latest jitter", 0.9999999, time.Hour, time.Duration(0.72 * float64(time.Hour))},
		// 6 s session: margin is a sixth (1 s), 0.67*6 = 4.02 s is before 5 s.
		{"six seconds", 0.5, 6 * time.Second, 4020 * time.Millisecond},
		// 2 s session: margin 1 s (floor), refresh at 1.34 s < 1 s left? 2-1 = 1 s cap.
		{"two seconds capped by margin", 0.5, 2 * time.Second, time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p.Float64 = fixed(tc.rand)
			got := p.RefreshAt(t0, t0.Add(tc.lifetime)).Sub(t0)
			if d := got - tc.want; d < -time.Millisecond || d > time.Millisecond {
				t.Fatalf("RefreshAt = %v after login, want %v", got, tc.want)
			}
		})
	}
}

func TestMarginFor(t *testing.T) {
	p := refresher.Default()
	for _, tc := range []struct{ lifetime, want time.Duration }{
		{time.Hour, time.Minute},
		{5 * time.Minute, 50 * time.Second},
		{3 * time.Second, time.Second},
		{0, time.Second},
	} {
		if got := p.MarginFor(tc.lifetime); got != tc.want {
			t.Errorf("MarginFor(%v) = %v, want %v", tc.lifetime, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	p := refresher.Default()
	p.Float64 = fixed(0.5)
	refused := &upstream.Error{Request: "verifyUser", Code: 1051}
	transient := &upstream.Error{Request: "verifyUser", HTTPStatus: 503}
	limited := &upstream.Error{Request: "verifyUser", HTTPStatus: 429}
	quota := &upstream.Error{Request: "verifyUser", Code: 1002}
	quotaAsked := &upstream.Error{Request: "verifyUser", Code: 1002, RetryAfter: 7 * time.Minute}

	t.Run("refused doubles from 1 min to 30 min without jitter", func(t *testing.T) {
		want := []time.Duration{1, 2, 4, 8, 16, 30, 30}
		for i, w := range want {
			if got := p.Backoff(refused, i+1, t0); got != w*time.Minute {
				t.Errorf("attempt %d: %v, want %v", i+1, got, w*time.Minute)
			}
		}
	})
	t.Run("transient is exponential with equal jitter and capped", func(t *testing.T) {
		// base 2s,4s,8s ... cap 5m; with rand 0.5 the wait is 3/4 of the base.
		for i, base := range []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second} {
			if got, want := p.Backoff(transient, i+1, t0), base*3/4; got != want {
				t.Errorf("attempt %d: %v, want %v", i+1, got, want)
			}
		}
		if got := p.Backoff(transient, 40, t0); got > 5*time.Minute || got < 150*time.Second {
			t.Errorf("attempt 40: %v, want within the 5 min cap", got)
		}
	})
	t.Run("429 waits at least 10s", func(t *testing.T) {
		p.Float64 = fixed(0)
		if got := p.Backoff(limited, 1, t0); got != 10*time.Second {
			t.Errorf("429: %v, want 10s", got)
		}
		p.Float64 = fixed(0.5)
	})
	t.Run("1002 waits for the next hour", func(t *testing.T) {
		p.Float64 = fixed(0)
		// t0 is 10:17:00 → 43 minutes to 11:00.
		if got := p.Backoff(quota, 1, t0); got != 43*time.Minute {
			t.Errorf("1002: %v, want 43m", got)
		}
		if got := p.Backoff(quotaAsked, 1, t0); got != 7*time.Minute {
			t.Errorf("1002 with RetryAfter: %v, want 7m", got)
		}
		p.Float64 = fixed(0.5)
	})
	t.Run("classify", func(t *testing.T) {
		for _, tc := range []struct {
			err  error
			want refresher.Kind
		}{
			{refused, refresher.Refused},
			{&upstream.Error{Code: 1052}, refresher.Refused},
			{transient, refresher.Transient},
			{&upstream.Error{Code: 1000}, refresher.Transient},
			{limited, refresher.RateLimited},
			{quota, refresher.Quota},
			{&upstream.Error{Code: 1191}, refresher.Permanent},
			{errors.New("SESSIOND_POS_PASSWORD_FILE: open: no such file"), refresher.Transient},
		} {
			if got := refresher.Classify(tc.err); got != tc.want {
				t.Errorf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
			}
		}
	})
}
