package envwatch_test

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/internal/envwatch"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const every = 2 * time.Second

type harness struct {
	t       *testing.T
	clk     *clock.Fake
	changes atomic.Int32
	fails   atomic.Int32
}

// start runs a watcher on path until the test ends.
func start(t *testing.T, path string) *harness {
	h := &harness{t: t, clk: clock.NewFake(time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC))}
	w := &envwatch.Watcher{Path: path, Interval: every, Clock: h.clk,
		Changed: func() { h.changes.Add(1) }, Failed: func(error) { h.fails.Add(1) }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	h.waitArmed() // the baseline look is taken before the first timer
	return h
}

// look lets the watcher take one more look: it waits for the watcher to arm
// its timer, then moves the clock past it, then waits for the next arming
// (the look is done by then).
func (h *harness) look() {
	h.t.Helper()
	h.waitArmed()
	h.clk.Advance(every)
	h.waitArmed()
}

func (h *harness) waitArmed() {
	h.t.Helper()
	deadline := time.After(10 * time.Second)
	for h.clk.Pending() == 0 {
		select {
		case <-h.clk.Changed():
		case <-deadline:
			h.t.Fatal("the watcher never armed its timer")
		}
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) want(n int32, what string) {
	h.t.Helper()
	if got := h.changes.Load(); got != n {
		h.t.Fatalf("%s: %d changes reported, want %d", what, got, n)
	}
}

func TestInPlaceWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "env")
	write(t, path, "SESSIOND_CREDENTIALS=pos\n")
	h := start(t, path)
	h.look()
	h.want(0, "nothing changed")
	write(t, path, "SESSIOND_CREDENTIALS=pos,pos_2\n")
	h.look()
	h.want(0, "one look after the write (not settled yet)")
	h.look()
	h.want(1, "the write settled")
	h.look()
	h.look()
	h.want(1, "no further change")
}

func TestRewriteWithSameContentIsNoChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "env")
	write(t, path, "A=1\n")
	h := start(t, path)
	for range 4 {
		write(t, path, "A=1\n")
		h.look()
	}
	h.want(0, "the same content written again")
}

func TestRenameOver(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "env")
	write(t, path, "A=1\n")
	h := start(t, path)
	write(t, filepath.Join(dir, "env.tmp"), "A=2\n")
	if err := os.Rename(filepath.Join(dir, "env.tmp"), path); err != nil {
		t.Fatal(err)
	}
	h.look()
	h.look()
	h.want(1, "a file renamed over the env file")
}

// kubelet mounts a ConfigMap as NAME -> ..data/NAME, ..data -> ..TIMESTAMP/,
// and updates it by writing a new timestamped directory and renaming a new
// ..data symlink over the old one; the file NAME itself is never written.
func TestKubeletConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	mk := func(ts, content string) {
		if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, ts, "env"), content)
	}
	mk("..2026_12_04_09_00_00.1", "SESSIOND_CREDENTIALS=pos\n")
	if err := os.Symlink("..2026_12_04_09_00_00.1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/env", filepath.Join(dir, "env")); err != nil {
		t.Fatal(err)
	}
	h := start(t, filepath.Join(dir, "env"))
	h.look()
	mk("..2026_12_04_09_05_00.2", "SESSIOND_CREDENTIALS=pos,pos_2\n")
	if err := os.Symlink("..2026_12_04_09_05_00.2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2026_12_04_09_00_00.1")); err != nil {
		t.Fatal(err)
	}
	h.look()
	h.look()
	h.want(1, "kubelet's ..data swap")
}

func TestBurstIsOneChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "env")
	write(t, path, "A=0\n")
	h := start(t, path)
	for i := range 10 {
		write(t, path, "A="+string(rune('1'+i))+"\n")
		h.look()
	}
	h.want(0, "while the file keeps changing")
	h.look()
	h.want(1, "after the burst settled")
}

// A change made after Prime but before Run starts (the daemon primes when it
// loads its configuration, and starts watching only once it listens) is
// reported; without Prime it would be the baseline and be missed.
func TestChangeBeforeRunAfterPrime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "env")
	write(t, path, "A=1\n")
	h := &harness{t: t, clk: clock.NewFake(time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC))}
	w := &envwatch.Watcher{Path: path, Interval: every, Clock: h.clk, Changed: func() { h.changes.Add(1) }}
	w.Prime()
	write(t, path, "A=2\n")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	h.look()
	h.look()
	h.want(1, "a change between Prime and Run")
	h.look()
	h.want(1, "no further change")
}

func TestUnreadableIsReportedOnceAndWatchGoesOn(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "env")
	write(t, path, "A=1\n")
	h := start(t, path)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil { // reading a directory fails
		t.Fatal(err)
	}
	h.look()
	h.look()
	h.look()
	if got := h.fails.Load(); got != 1 {
		t.Fatalf("%d failures reported for one lasting error, want 1", got)
	}
	h.want(0, "an unreadable file")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	write(t, path, "A=2\n")
	h.look()
	h.look()
	h.want(1, "the file readable again with new content")
}
