package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestSimulateCountsLogins: over two simulated hours of 1 h sessions,
// three daemons without fleet mode log in three times at the start and
// about 1.5 times an hour each; with fleet mode one login serves all three.
func TestSimulateCountsLogins(t *testing.T) {
	mr := miniredis.RunT(t)
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := writeKeyring(keyFile); err != nil {
		t.Fatal(err)
	}
	off, err := simulate(context.Background(), 3, false, 2, 30*time.Second, "redis://"+mr.Addr(), keyFile)
	if err != nil {
		t.Fatal(err)
	}
	on, err := simulate(context.Background(), 3, true, 2, 30*time.Second, "redis://"+mr.Addr(), keyFile)
	if err != nil {
		t.Fatal(err)
	}
	// Refreshes come at 0.67 ± 0.05 of the hour: two or three per daemon in two hours.
	if off.atStart != 3 || off.after < 6 || off.after > 9 {
		t.Errorf("fleet off: %d logins at the start, %d after; want 3 and 6..9", off.atStart, off.after)
	}
	if on.atStart != 1 || on.after < 2 || on.after > 3 {
		t.Errorf("fleet on: %d logins at the start, %d after; want 1 and 2..3", on.atStart, on.after)
	}
	if off.invalid+on.invalid != 0 {
		t.Errorf("%d daemon-steps without a valid session", off.invalid+on.invalid)
	}
	var b bytes.Buffer
	writeLogins(&b, []loginFigures{off, on})
	if !strings.Contains(b.String(), "daemon-steps without a valid session: 0") {
		t.Errorf("the table does not say every step had a valid session:\n%s", b.String())
	}
}

// TestSeedConfiguresValidPairs: the environment seed writes is a valid
// configuration of n credentials.
func TestSeedConfiguresValidPairs(t *testing.T) {
	fake := erplytest.New(clock.Real{})
	defer fake.Close()
	cfg, err := config.Load(seed(fake, 7))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Credentials) != 7 || cfg.Credentials[1].Parent != "pos" || cfg.Credentials[6].Kind != config.KindPassword {
		t.Fatalf("seed(7) configured %d credentials: %+v", len(cfg.Credentials), cfg.Credentials)
	}
}

// TestRSSTableMarksTheTarget: the difference of the medians is compared
// with the 4 MiB target.
func TestRSSTableMarksTheTarget(t *testing.T) {
	if _, err := procStatus(os.Getpid(), "VmRSS"); err != nil {
		t.Fatalf("reading this process's VmRSS: %v", err)
	}
	for _, tc := range []struct {
		on   int
		want string
	}{{20 << 10, "+2.0 MiB   ≤ +4 MiB: met"}, {23 << 10, "+5.0 MiB   ≤ +4 MiB: NOT MET"}} {
		var b bytes.Buffer
		writeRSS(&b, []rssFigures{{rss: 18 << 10}, {rss: 17 << 10}, {rss: 19 << 10}}, []rssFigures{{rss: tc.on}})
		if !strings.Contains(b.String(), tc.want) {
			t.Errorf("want %q in:\n%s", tc.want, b.String())
		}
	}
}
