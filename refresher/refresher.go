// Package refresher decides when a session is refreshed: ahead of expiry with jitter, and after failures with backoff that never hammers Erply's login.
package refresher

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Policy holds the refresh and backoff constants. The zero value is not
// usable; start from Default and override fields.
type Policy struct {
	// Fraction of a session's lifetime after which it is refreshed (0.67).
	Fraction float64
	// Jitter spreads the refresh point by ±Jitter of the lifetime (0.05),
	// so many daemons started together do not refresh in step.
	Jitter float64
	// Margin is the safety margin before expiry: a session inside it is never
	// served. For short sessions the smaller of Margin and a sixth of the
	// lifetime is used, and never under MinMargin.
	Margin time.Duration
	// BackoffMin and BackoffMax bound the exponential backoff after a
	// transient failure (network, 5xx, 1000 maintenance).
	BackoffMin, BackoffMax time.Duration
	// RefusedMin and RefusedMax bound the backoff after a refused login
	// (1050–1053): Erply blocks users that fail repeatedly.
	RefusedMin, RefusedMax time.Duration
	// RateLimitMin is the least wait after HTTP 429.
	RateLimitMin time.Duration
	// Float64 returns a random number in [0, 1); nil uses math/rand/v2.
	Float64 func() float64
}

// MinMargin is the smallest safety margin: Erply's timestamps are whole seconds.
const MinMargin = time.Second

// Default returns the production policy.
func Default() Policy {
	return Policy{
		Fraction:     0.67,
		Jitter:       0.05,
		Margin:       60 * time.Second,
		BackoffMin:   2 * time.Second,
		BackoffMax:   5 * time.Minute,
		RefusedMin:   time.Minute,
		RefusedMax:   30 * time.Minute,
		RateLimitMin: 10 * time.Second,
	}
}

func (p Policy) rand() float64 {
	if p.Float64 != nil {
		return p.Float64()
	}
	return rand.Float64()
}

// MarginFor returns the safety margin for a session of the given lifetime.
func (p Policy) MarginFor(lifetime time.Duration) time.Duration {
	m := p.Margin
	if s := lifetime / 6; s < m {
		m = s
	}
	if m < MinMargin {
		m = MinMargin
	}
	return m
}

// RefreshAt returns when a session obtained at obtained (local clock, when
// the login request started) and expiring at expires should be refreshed:
// at Fraction of its lifetime ± Jitter, never later than the safety margin
// before expiry, and never before a third of the lifetime has passed.
func (p Policy) RefreshAt(obtained, expires time.Time) time.Time {
	lifetime := expires.Sub(obtained)
	if lifetime <= 0 {
		return obtained
	}
	f := p.Fraction + p.Jitter*(2*p.rand()-1)
	at := obtained.Add(time.Duration(float64(lifetime) * f))
	if latest := expires.Add(-p.MarginFor(lifetime)); at.After(latest) {
		at = latest
	}
	// However short the session, never sooner than a third of it: a session
	// whose margin is its whole life must not be refreshed without pause.
	if earliest := obtained.Add(lifetime / 3); at.Before(earliest) {
		at = earliest
	}
	return at
}

// Kind classifies a failure for the retry schedule.
type Kind int

// Failure kinds.
const (
	Transient   Kind = iota // network, 5xx, maintenance, bad reply: exponential backoff
	Refused                 // 1050–1053: slow doubling from RefusedMin to RefusedMax
	Quota                   // 1002: wait for the next quota hour
	RateLimited             // 429: at least RateLimitMin
	Permanent               // configuration problems Erply will not fix by itself (JWT/SSO, access): slow like Refused
)

// Classify maps an error from a login to a Kind.
func Classify(err error) Kind {
	switch {
	case errors.Is(err, upstream.ErrLoginRefused):
		return Refused
	case errors.Is(err, upstream.ErrQuota):
		return Quota
	case errors.Is(err, upstream.ErrRateLimited):
		return RateLimited
	case errors.Is(err, upstream.ErrJWT), errors.Is(err, upstream.ErrAccess), errors.Is(err, upstream.ErrBadRequest):
		return Permanent
	}
	return Transient
}

// Backoff returns how long to wait before the next attempt after the
// attempt-th consecutive failure (1 for the first) ending in err, at now.
func (p Policy) Backoff(err error, attempt int, now time.Time) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	var asked time.Duration
	var ue *upstream.Error
	if errors.As(err, &ue) {
		asked = ue.RetryAfter
	}
	switch Classify(err) {
	case Refused, Permanent:
		// No jitter below the minimum: the schedule is the promise to Erply.
		return doubling(p.RefusedMin, p.RefusedMax, attempt)
	case Quota:
		if asked > 0 {
			return asked + p.jitterUpTo(5*time.Second)
		}
		// The quota window is the clock hour.
		return upstream.UntilNextHour(time.Time{}, now) + p.jitterUpTo(5*time.Second)
	case RateLimited:
		d := p.RateLimitMin
		if asked > d {
			d = asked
		}
		return d + p.jitterUpTo(d/2)
	}
	d := doubling(p.BackoffMin, p.BackoffMax, attempt)
	// Equal jitter: half fixed, half random, so attempts spread but never bunch at zero.
	return d/2 + time.Duration(p.rand()*float64(d/2))
}

func (p Policy) jitterUpTo(d time.Duration) time.Duration {
	return time.Duration(p.rand() * float64(d))
}

func doubling(min, max time.Duration, attempt int) time.Duration {
	d := min
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}
