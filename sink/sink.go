// Package sink writes each credential's current session key to a file, atomically, for consumers that only read files.
package sink

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/pool"
)

// Defaults for the zero fields of Options.
const (
	// DefaultRetryMin is the wait before the first retry of a failed write;
	// it doubles with each failure up to DefaultRetryMax. A failed write
	// costs nothing upstream, so a fault that clears (a full disk, a
	// missing directory, a read-only mount) is noticed within a minute.
	DefaultRetryMin = time.Second
	DefaultRetryMax = time.Minute
)

// Target is where one credential's key goes.
type Target struct {
	Path string
	Mode os.FileMode // default 0640
}

// Options configure a Writer. The zero value of every field picks its default.
type Options struct {
	// Logger gets a line per failed write (an error at the first failure,
	// warnings at the retries) and a debug line per written key.
	Logger zerolog.Logger
	// Clock times the retries (default the system clock).
	Clock clock.Clock
	// Registerer, when set, gets erply_sessiond_sink_write_failing{credential}
	// and erply_sessiond_sink_write_failures_total{credential}.
	Registerer prometheus.Registerer
	// RetryMin and RetryMax bound the doubling wait between retries of a
	// failed write (defaults DefaultRetryMin and DefaultRetryMax).
	RetryMin, RetryMax time.Duration
}

// Writer rewrites sink files on every session change, and retries a
// failed write with a doubling wait until it succeeds or the key changes
// again. It is safe for concurrent use; make one with New, feed it
// snapshots with Apply (for instance from pool.Subscribe), and Close it.
type Writer struct {
	log      zerolog.Logger
	clk      clock.Clock
	retryMin time.Duration
	retryMax time.Duration
	failing  *prometheus.GaugeVec
	failures *prometheus.CounterVec
	retries  sync.WaitGroup // armed retry timers and retries running

	mu      sync.Mutex
	closed  bool
	targets map[string]Target // by credential name
	sinks   map[string]*state // by credential name
}

// state is one credential's sink: the key to write and how that went.
type state struct {
	key      string // the latest key Applied; never logged
	written  string // fingerprint and path of the key last written
	err      error  // the last write's failure, nil once one succeeds
	failures int    // consecutive failed writes
	retry    clock.Timer
}

// New returns a Writer with no targets. It registers its metrics on
// opts.Registerer and panics if they are already registered there (a
// wiring mistake, as with prometheus.MustRegister).
func New(opts Options) *Writer {
	w := &Writer{
		log:      opts.Logger.With().Str("component", "sink").Logger(),
		clk:      opts.Clock,
		retryMin: opts.RetryMin,
		retryMax: opts.RetryMax,
		targets:  map[string]Target{},
		sinks:    map[string]*state{},
		failing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "erply_sessiond_sink_write_failing",
			Help: "1 while the credential's SINK_FILE does not hold its current key because writing it failed (retried until it succeeds), else 0.",
		}, []string{"credential"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erply_sessiond_sink_write_failures_total",
			Help: "Failed writes of the credential's SINK_FILE, retries included.",
		}, []string{"credential"}),
	}
	if w.clk == nil {
		w.clk = clock.Real{}
	}
	if w.retryMin <= 0 {
		w.retryMin = DefaultRetryMin
	}
	if w.retryMax <= 0 {
		w.retryMax = DefaultRetryMax
	}
	w.retryMax = max(w.retryMax, w.retryMin)
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(w.failing, w.failures)
	}
	return w
}

// SetTargets replaces the set of sink files (at start and on reload). A
// new or moved target gets the credential's current key at once; files of
// credentials no longer listed are left in place and no longer retried.
func (w *Writer) SetTargets(t map[string]Target) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.targets = t
	for name, st := range w.sinks {
		if _, ok := t[name]; !ok {
			w.stopRetry(st)
			delete(w.sinks, name)
			w.failing.DeleteLabelValues(name)
			w.failures.DeleteLabelValues(name)
		}
	}
	for name, tg := range t {
		w.failing.WithLabelValues(name)
		w.failures.WithLabelValues(name)
		if st := w.sinks[name]; st != nil && st.key != "" && st.written != fingerprint(st.key, tg) {
			w.writeLocked(name, st)
		}
	}
}

// Apply writes s's key to its credential's sink file if it has one and the
// key differs from the one last written. A snapshot without a session, or a
// removed credential, leaves the file as it is: the daemon never writes a
// key it would not serve, and a removed credential's file stays. A write
// that fails is retried until it succeeds or a newer key replaces it.
func (w *Writer) Apply(s *pool.Snapshot) {
	if s.Removed || s.Session == nil || s.Session.SessionKey == "" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	t, ok := w.targets[s.Name]
	if !ok || t.Path == "" {
		return
	}
	st := w.sinks[s.Name]
	if st == nil {
		st = &state{}
		w.sinks[s.Name] = st
	}
	st.key = s.Session.SessionKey
	if st.written == fingerprint(st.key, t) {
		return
	}
	w.writeLocked(s.Name, st)
}

// Failing returns why the credential's sink file does not hold its current
// key (the last write's error, retried meanwhile), or nil when it does or
// the credential has no sink. The error names the file, never the key.
func (w *Writer) Failing(name string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if st := w.sinks[name]; st != nil {
		return st.err
	}
	return nil
}

// Close stops the retries and waits for one in progress. Apply does
// nothing after Close. It is safe to call more than once.
func (w *Writer) Close() {
	w.mu.Lock()
	w.closed = true
	for _, st := range w.sinks {
		w.stopRetry(st)
	}
	w.mu.Unlock()
	w.retries.Wait()
}

func fingerprint(key string, t Target) string { return pool.Fingerprint(key) + t.Path }

// writeLocked writes st's key to name's target and records the outcome,
// arming a retry after a failure. w.mu is held.
func (w *Writer) writeLocked(name string, st *state) {
	t := w.targets[name]
	fp := fingerprint(st.key, t)
	err := WriteAtomic(t.Path, []byte(st.key+"\n"), t.Mode)
	if err == nil {
		w.stopRetry(st)
		if st.err != nil {
			w.log.Info().Str("credential", name).Str("file", t.Path).Int("failures", st.failures).Msg("sink file written after failures")
		}
		st.written, st.err, st.failures = fp, nil, 0
		w.failing.WithLabelValues(name).Set(0)
		w.log.Debug().Str("credential", name).Str("file", t.Path).Str("key", pool.Fingerprint(st.key)).Msg("sink file written")
		return
	}
	st.err = err
	st.failures++
	w.failing.WithLabelValues(name).Set(1)
	w.failures.WithLabelValues(name).Inc()
	wait := w.backoff(st.failures)
	ev := w.log.Warn()
	if st.failures == 1 {
		ev = w.log.Error()
	}
	ev.Err(err).Str("credential", name).Str("file", t.Path).Int("attempt", st.failures).Stringer("retryIn", wait).
		Msg("cannot write sink file; retrying")
	if st.retry != nil {
		return // armed by an earlier failure: it writes whatever key is current then
	}
	w.retries.Add(1)
	st.retry = w.clk.AfterFunc(wait, func() {
		defer w.retries.Done()
		w.retry(name, st)
	})
}

// retry is a retry timer's event.
func (w *Writer) retry(name string, st *state) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st.retry = nil
	if w.closed || w.sinks[name] != st || st.err == nil {
		return // closed, target dropped, or written since
	}
	w.writeLocked(name, st)
}

// stopRetry disarms st's retry timer, if any. w.mu is held.
func (w *Writer) stopRetry(st *state) {
	if st.retry != nil && st.retry.Stop() {
		w.retries.Done()
	}
	st.retry = nil
}

// backoff is the wait after the n-th consecutive failure.
func (w *Writer) backoff(n int) time.Duration {
	d := w.retryMin
	for i := 1; i < n && d < w.retryMax; i++ {
		d *= 2
	}
	return min(d, w.retryMax)
}

// WriteAtomic writes data to path through a temporary file in the same
// directory and a rename, so a reader sees the old content or the new, never
// a part. The file gets mode (default 0640) and is fsynced before the rename.
func WriteAtomic(path string, data []byte, mode os.FileMode) (err error) {
	if mode == 0 {
		mode = 0o640
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("sink %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(mode); err == nil {
		if _, err = f.Write(data); err == nil {
			err = f.Sync()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sink %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("sink %s: %w", path, err)
	}
	return nil
}
