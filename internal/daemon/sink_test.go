package daemon_test

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/pool"
)

// Sink file tests through the running daemon.

// TestSinkFiles: SINK_FILE holds the current key and a newline with mode
// 0640 (or SINK_MODE), is rewritten on every session change, and stays after
// shutdown.
func TestSinkFiles(t *testing.T) {
	var posSink, cashierSink string
	d := startDaemon(t, daemonOptions{setup: func(d *testDaemon) {
		posSink = filepath.Join(d.dir, "pos.key")
		cashierSink = filepath.Join(d.dir, "cashier.key")
		d.env["SESSIOND_POS_SINK_FILE"] = posSink
		d.env["SESSIOND_CASHIER_SINK_FILE"] = cashierSink
		d.env["SESSIOND_CASHIER_SINK_MODE"] = "0600"
	}})
	check := func(path, key string, mode os.FileMode) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != mode {
			t.Fatalf("%s mode = %v, want %v", filepath.Base(path), fi.Mode(), mode)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != key+"\n" {
			t.Fatalf("%s = %q (%v), want the current key and a newline", filepath.Base(path), b, err)
		}
	}
	check(posSink, d.key("pos"), 0o640)
	check(cashierSink, d.key("cashier"), 0o600)

	old, oldCashier := d.key("pos"), d.key("cashier")
	s, err := d.client.Invalidate(t.Context(), "pos", old)
	if err != nil || s.SessionKey == old {
		t.Fatalf("invalidate: %v", err)
	}
	// Written before the invalidation answered: no window with the old key.
	check(posSink, s.SessionKey, 0o640)
	// cashier follows its parent in the background; its sink follows it,
	// and says so in the log once the file is in place.
	var cashierKey string
	d.waitFor(t, 10*time.Second, "cashier's new key", func() bool {
		cashierKey = d.key("cashier")
		return cashierKey != oldCashier
	})
	fp := `"key":"` + pool.Fingerprint(cashierKey) + `"`
	d.logs.waitLine(t, 10*time.Second, "cashier's sink written", func(l string) bool {
		return strings.Contains(l, `"message":"sink file written"`) && strings.Contains(l, fp)
	})
	check(cashierSink, cashierKey, 0o600)

	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	check(posSink, s.SessionKey, 0o640)
	if strings.Contains(d.logs.String(), s.SessionKey) {
		t.Fatal("the sink log line carries the key")
	}
}

// TestSinkAtomicUnderRotation: a reader reading the sink file in a loop while
// the key rotates 100 times only ever sees whole keys the daemon served, and
// after each rotation the file holds the new key, live at Erply.
func TestSinkAtomicUnderRotation(t *testing.T) {
	var sink string
	// pos alone: a pin on it would find each dropped key dead too and
	// replace it from its own goroutine, racing the caller's report.
	d := startDaemon(t, daemonOptions{env: map[string]string{"SESSIOND_CREDENTIALS": "pos",
		"SESSIOND_CASHIER_KIND": "", "SESSIOND_CASHIER_PARENT": "", "SESSIOND_CASHIER_PIN": ""}, setup: func(d *testDaemon) {
		sink = filepath.Join(d.dir, "pos.key")
		d.env["SESSIOND_POS_SINK_FILE"] = sink
	}})
	key := d.key("pos")
	served := map[string]bool{key + "\n": true}

	type result struct {
		reads  int
		seen   []string // distinct consecutive contents
		errors []string
	}
	var stop atomic.Bool
	done := make(chan result)
	go func() {
		var r result
		prev := ""
		for !stop.Load() {
			b, err := os.ReadFile(sink)
			if err != nil {
				r.errors = append(r.errors, err.Error())
				continue
			}
			r.reads++
			if v := string(b); v != prev {
				r.seen = append(r.seen, v)
				prev = v
			}
		}
		done <- r
	}()

	const rotations = 100
	for i := range rotations {
		// Each rotation: Erply drops the key, a caller reports it. (A live
		// key reported over and over makes no login past the bound on
		// forced logins; a dead one at least pool.ForcedEvery old does.)
		d.fake.DeleteSession(key)
		d.clk.Advance(pool.ForcedEvery)
		s, err := d.client.Invalidate(t.Context(), "pos", key)
		if err != nil || s.SessionKey == key {
			stop.Store(true)
			<-done
			t.Fatalf("rotation %d: %v", i, err)
		}
		key = s.SessionKey
		served[key+"\n"] = true
		if b, err := os.ReadFile(sink); err != nil || string(b) != key+"\n" {
			stop.Store(true)
			<-done
			t.Fatalf("rotation %d: sink = %q (%v), want the new key", i, b, err)
		}
		// The reader may still hold the key just dropped; the file holds
		// the new one, live at Erply.
		if !d.fake.SessionValid(key) {
			stop.Store(true)
			<-done
			t.Fatalf("rotation %d: the sink's new key is not a live session at Erply", i)
		}
	}
	stop.Store(true)
	r := <-done

	if len(r.errors) > 0 {
		t.Fatalf("the reader failed %d times, first: %s", len(r.errors), r.errors[0])
	}
	for _, v := range r.seen {
		if !keyRE.MatchString(v) || !served[v] {
			t.Fatalf("the reader saw %q: not a whole key the daemon served", v)
		}
	}
	if r.reads == 0 {
		t.Fatal("the reader never read")
	}
	t.Logf("%d reads, %d distinct keys seen by the reader over %d rotations", r.reads, len(r.seen), rotations)
	if n := d.fake.Calls("verifyUser"); n != rotations+1 {
		t.Fatalf("verifyUser calls = %d, want %d", n, rotations+1)
	}
	// No temporary files are left behind.
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temporary file left: %s", e.Name())
		}
	}
}
