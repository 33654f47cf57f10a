package fleet

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrRedisUnreachable is returned, without touching the network, for every
// Redis command while the breaker is open: after a failure, Redis is left
// alone for the cool-down, then one command probes it.
var ErrRedisUnreachable = errors.New("Redis unreachable")

// breaker is a circuit breaker on the Redis client (a go-redis Limiter):
// one failed command opens it, every command then fails at once until the
// cool-down has passed; commands then go through again, the first failure
// opens it for another cool-down and the first success closes it. (A
// single-probe half-open state does not fit go-redis: a connection's
// set-up asks the Limiter again from inside the probe.) It measures real
// time: Redis does.
type breaker struct {
	cooldown time.Duration
	now      func() time.Time
	changed  func(up bool, cause error) // called outside the lock on every open/close

	mu        sync.Mutex
	open      bool
	openUntil time.Time
	cause     error
}

var _ redis.Limiter = (*breaker)(nil)

// Allow implements redis.Limiter.
func (b *breaker) Allow() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open && b.now().Before(b.openUntil) {
		return ErrRedisUnreachable
	}
	return nil
}

// ReportResult implements redis.Limiter.
func (b *breaker) ReportResult(err error) {
	if errors.Is(err, context.Canceled) || errors.Is(err, ErrRedisUnreachable) {
		// The caller gave up, or the breaker itself refused a connection's
		// set-up inside an allowed command: neither says anything new.
		return
	}
	fail := isFailure(err)
	b.mu.Lock()
	wasOpen := b.open
	if fail {
		b.open, b.openUntil, b.cause = true, b.now().Add(b.cooldown), err
	} else {
		b.open, b.cause = false, nil
	}
	nowOpen := b.open
	b.mu.Unlock()
	if wasOpen != nowOpen && b.changed != nil {
		b.changed(!nowOpen, err)
	}
}

// state reports whether the breaker is open and the failure that opened it.
func (b *breaker) state() (open bool, cause error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open, b.cause
}

// isFailure tells a Redis that cannot serve the fleet (down, slow, refusing
// the login or a command) from an answer: a reply, a missing key, a script
// not yet cached (go-redis then sends it), or a caller that gave up.
func isFailure(err error) bool {
	switch {
	case err == nil, errors.Is(err, redis.Nil), errors.Is(err, context.Canceled):
		return false
	case strings.HasPrefix(err.Error(), "NOSCRIPT"):
		return false
	}
	return true
}
