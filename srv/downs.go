package srv

import (
	"strings"
	"sync"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
)

// Downs remembers which endpoints a caller reported unreachable, each for a
// fixed cool-down, so that Order can put them last until the cool-down ends.
// Keys are whatever the caller chooses (for example "cred/list/address").
//
// Memory is bounded by the number of distinct keys marked within one
// cool-down: every MarkDown first drops the marks that have expired.
// Downs is safe for concurrent use; the zero value is not usable, call NewDowns.
type Downs struct {
	clk      clock.Clock
	cooldown time.Duration

	mu    sync.Mutex
	until map[string]time.Time // key -> end of its cool-down
}

// NewDowns returns a Downs whose marks last cooldown on clk. A cooldown of
// zero or less makes marks expire at once, so nothing is ever down.
func NewDowns(clk clock.Clock, cooldown time.Duration) *Downs {
	return &Downs{clk: clk, cooldown: cooldown, until: make(map[string]time.Time)}
}

// MarkDown marks key down for the cool-down from now; marking a key that is
// already down restarts its cool-down.
func (d *Downs) MarkDown(key string) {
	now := d.clk.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, t := range d.until {
		if !now.Before(t) {
			delete(d.until, k)
		}
	}
	if d.cooldown > 0 {
		d.until[key] = now.Add(d.cooldown)
	}
}

// IsDown reports whether key was marked down less than the cool-down ago.
func (d *Downs) IsDown(key string) bool {
	now := d.clk.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.until[key]
	return ok && now.Before(t)
}

// Forget clears the marks of every key that starts with prefix: a full key
// clears that endpoint (and any key it is a prefix of), "cred/" every list
// of a credential whose endpoints were replaced, "" everything.
func (d *Downs) Forget(prefix string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k := range d.until {
		if strings.HasPrefix(k, prefix) {
			delete(d.until, k)
		}
	}
}
