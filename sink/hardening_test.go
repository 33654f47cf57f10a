package sink_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/sink"
)

// Issue 16 item 4: a sink write that failed (full disk, read-only mount,
// missing directory) was never retried: the file kept the old key until
// the session next changed (up to ~40 min) even after the fault cleared,
// with one log line and nothing else to show it. It is retried with a
// doubling wait (1 s to 1 min) until it succeeds, and Failing and the
// metrics show it meanwhile.
func TestFailedSinkWriteIsRetriedUntilItSucceeds(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	w := sink.New(sink.Options{Logger: zerolog.New(zerolog.NewTestWriter(t)), Clock: clk, Registerer: reg})
	t.Cleanup(w.Close)
	dir := filepath.Join(t.TempDir(), "keys") // not there yet
	path := filepath.Join(dir, "pos.key")
	w.SetTargets(map[string]sink.Target{"pos": {Path: path}})

	failing := func() float64 {
		return testutil.ToFloat64(mustGauge(t, reg, "erply_sessiond_sink_write_failing"))
	}
	w.Apply(snap("pos", "key-one-0123456789"))
	err := w.Failing("pos")
	if err == nil || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "key-one") {
		t.Fatalf("Failing = %v, want the write's error naming the file", err)
	}
	if failing() != 1 {
		t.Fatalf("sink_write_failing = %v, want 1", failing())
	}
	// Retries at 1 s, then 2 s, 4 s later: each fails while the directory is missing.
	clk.Advance(time.Second)
	clk.Advance(2 * time.Second)
	if n := testutil.ToFloat64(mustGauge(t, reg, "erply_sessiond_sink_write_failures_total")); n != 3 {
		t.Fatalf("sink_write_failures_total = %v after two retries, want 3", n)
	}
	// A newer key while failing: the retry writes the newest.
	w.Apply(snap("pos", "key-two-0123456789"))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	clk.Advance(4 * time.Second)
	if got := read(t, path); got != "key-two-0123456789\n" {
		t.Fatalf("sink file = %q after the fault cleared, want the newest key", got)
	}
	if err := w.Failing("pos"); err != nil || failing() != 0 {
		t.Fatalf("after the write: Failing = %v, sink_write_failing = %v", err, failing())
	}
	// Nothing more to retry: the waits reach their cap and stop there.
	before := testutil.ToFloat64(mustGauge(t, reg, "erply_sessiond_sink_write_failures_total"))
	clk.Advance(time.Hour)
	if n := testutil.ToFloat64(mustGauge(t, reg, "erply_sessiond_sink_write_failures_total")); n != before {
		t.Fatalf("%v more failures after the write succeeded", n-before)
	}
}

// The wait doubles from 1 s and stops at 1 min: an hour of a missing
// directory is 64 attempts, not one per session change nor one a second.
func TestSinkRetryWaitIsCapped(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	w := sink.New(sink.Options{Logger: zerolog.Nop(), Clock: clk, Registerer: reg})
	t.Cleanup(w.Close)
	w.SetTargets(map[string]sink.Target{"pos": {Path: filepath.Join(t.TempDir(), "missing", "pos.key")}})
	w.Apply(snap("pos", "key-one-0123456789"))
	for range 60 {
		clk.Advance(time.Minute)
	}
	// 1 + retries at 1, 3, 7, 15, 31, 63 s, then one a minute to 60 min.
	n := testutil.ToFloat64(mustGauge(t, reg, "erply_sessiond_sink_write_failures_total"))
	if n < 60 || n > 66 {
		t.Fatalf("%v failed writes in an hour, want about 65 (one a minute once capped)", n)
	}
}

// mustGauge returns the one series of a metric family as a collector
// testutil can read.
func mustGauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x"}, func() float64 { return v })
		}
	}
	t.Fatalf("no single series of %s", name)
	return nil
}
