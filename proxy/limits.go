package proxy

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"

	"github.com/erply-sessiond/erply-sessiond/internal/answer"
)

// pauseReason says which Erply limit paused a client code.
type pauseReason int

const (
	pauseRateLimited pauseReason = iota + 1 // HTTP 429: the per-IP limit
	pauseQuota                              // 1002: the hourly request quota
)

func (r pauseReason) String() string {
	if r == pauseQuota {
		return "quota_exceeded"
	}
	return "rate_limited"
}

// limiter holds one client code's limits: a FIFO semaphore of upstream
// slots and the pause set by Erply's last 429 or 1002.
type limiter struct {
	sem           *semaphore.Weighted
	inflight      prometheus.Gauge
	pausedSeconds prometheus.Counter

	mu    sync.Mutex
	until time.Time
	why   pauseReason
}

// limiter returns the limits of clientCode, made on first use. Client codes
// come from the configuration, so the map stays small.
func (p *Proxy) limiter(clientCode string) *limiter {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.limits[clientCode]
	if !ok {
		l = &limiter{
			sem:           semaphore.NewWeighted(p.concurrency),
			inflight:      p.metrics.inflight.WithLabelValues(clientCode),
			pausedSeconds: p.metrics.paused.WithLabelValues(clientCode),
		}
		p.limits[clientCode] = l
	}
	return l
}

// pause extends the pause to now+d (a pause never shortens) and returns by
// how much it grew and when it ends.
func (l *limiter) pause(now time.Time, d time.Duration, why pauseReason) (added time.Duration, until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	end := now.Add(d)
	if !end.After(l.until) {
		return 0, l.until
	}
	from := l.until
	if from.Before(now) {
		from = now
	}
	l.until, l.why = end, why
	return end.Sub(from), end
}

// paused returns how long the pause still lasts at now, and why.
func (l *limiter) paused(now time.Time) (time.Duration, pauseReason) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !now.Before(l.until) {
		return 0, 0
	}
	return l.until.Sub(now), l.why
}

// pausedError is the answer while lim is paused, nil when it is not.
func (p *Proxy) pausedError(lim *limiter) *answer.Error {
	left, why := lim.paused(p.clk.Now())
	if left <= 0 {
		return nil
	}
	return pausedError(why, left)
}

// acquire takes an upstream slot, waiting in line (first come, first
// served) up to QueueWait on the proxy's clock and never past ctx.
func (p *Proxy) acquire(ctx context.Context, lim *limiter) *answer.Error {
	if !lim.sem.TryAcquire(1) {
		wctx, cancel := context.WithCancel(ctx)
		t := p.clk.AfterFunc(p.queueWait, cancel)
		if p.onQueue != nil {
			p.onQueue()
		}
		err := lim.sem.Acquire(wctx, 1)
		t.Stop()
		cancel()
		if err != nil {
			return errBusy
		}
	}
	lim.inflight.Inc()
	return nil
}

func (l *limiter) release() {
	l.inflight.Dec()
	l.sem.Release(1)
}
