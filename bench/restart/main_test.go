package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestSeedConfiguresValidPairs: the environment seed writes is a valid
// configuration of n credentials, a PIN credential on top of each password
// one, and an odd count ends with a password credential alone.
func TestSeedConfiguresValidPairs(t *testing.T) {
	for _, n := range []int{1, 4, 7} {
		fake := erplytest.New(clock.Real{})
		env, names := seed(fake, n)
		fake.Close()
		cfg, err := config.Load(env)
		if err != nil {
			t.Fatalf("%d credentials: %v", n, err)
		}
		if len(cfg.Credentials) != n || len(names) != n {
			t.Fatalf("%d credentials configured, %d names; want %d", len(cfg.Credentials), len(names), n)
		}
		for i, c := range cfg.Credentials {
			want := config.KindPassword
			if i%2 == 1 {
				want = config.KindPIN
				if c.Parent != cfg.Credentials[i-1].Name {
					t.Errorf("%s stands on %q, want %s", c.Name, c.Parent, cfg.Credentials[i-1].Name)
				}
			}
			if c.Kind != want || c.Name != names[i] {
				t.Errorf("credential %d is %s %s, want %s %s", i, c.Kind, c.Name, want, names[i])
			}
		}
	}
}

// TestTableShowsBothSideBySide: the table has one column per daemon with
// the medians of its restarts.
func TestTableShowsBothSideBySide(t *testing.T) {
	ms := time.Millisecond
	modes := []*mode{
		{name: "without state dir", runs: []restartFigures{
			{logins: 100, socket: 9 * ms, firstKey: 120 * ms, ready: 1800 * ms},
			{logins: 100, socket: 8 * ms, firstKey: 110 * ms, ready: 1900 * ms},
			{logins: 100, socket: 10 * ms, firstKey: 115 * ms, ready: 1850 * ms},
		}},
		{name: "with state dir", runs: []restartFigures{
			{checks: 100, kept: 100, socket: 1400 * ms, firstKey: 1401 * ms, ready: 1402 * ms},
			{checks: 100, kept: 100, socket: 1500 * ms, firstKey: 1502 * ms, ready: 1503 * ms},
			{checks: 100, kept: 99, socket: 1450 * ms, firstKey: 1450 * ms, ready: 1451 * ms},
		}},
	}
	var b bytes.Buffer
	writeTable(&b, modes, 100, 2048)
	out := b.String()
	for _, want := range []string{
		"without state dir   with state dir",
		"logins (verifyUser + switchUser)         100                 0\n",
		"credentials keeping their key (of 100)   0                   100\n",
		"start → first key (pos)                  115ms               1.45s\n",
		"socket accepts → first key               105ms               1ms\n",
		"state.json size                          -                   2.0 KiB (0.0 KiB per credential)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q:\n%s", want, out)
		}
	}
}
