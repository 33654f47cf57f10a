package daemon_test

import (
	"errors"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/internal/daemon"
	"github.com/erply-sessiond/erply-sessiond/state"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// Warm restart through the real daemon: a daemon with a state directory is
// stopped (as SIGTERM does) and a new one is started on the same directory,
// against the same fake Erply.

// withStateDir turns the state directory on, inside the test's directory
// (which os.MkdirTemp makes 0700: the daemon refuses anything looser).
func withStateDir(d *testDaemon) { d.env["SESSIOND_STATE_DIR"] = filepath.Join(d.dir, "state") }

// restart stops d cleanly and starts a daemon on what it left behind; o's
// env is applied on top of d's environment.
func restart(t *testing.T, d *testDaemon, o daemonOptions) *testDaemon {
	t.Helper()
	if err := d.stop(); err != nil {
		t.Fatalf("stop before the restart: %v\n%s", err, d.logs)
	}
	d.client.CloseIdleConnections()
	d.http.CloseIdleConnections()
	o.restartOf = d
	return startDaemon(t, o)
}

// logins counts the fake's login calls.
func logins(f *erplytest.Server) (verifyUser, switchUser int) {
	return f.Calls("verifyUser"), f.Calls("switchUser")
}

// expiresAt is a credential's expiry as GET /v1/sessions/{name} says.
func (d *testDaemon) expiresAt(t *testing.T, name string) time.Time {
	t.Helper()
	code, body := d.get("/v1/sessions/" + name)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/sessions/%s = %d %s", name, code, body)
	}
	var s struct {
		ExpiresAt time.Time `json:"expiresAt"`
	}
	jsonBody(t, body, &s)
	return s.ExpiresAt
}

// metric returns the value of one sample line of /metrics ("" if absent).
func (d *testDaemon) metric(t *testing.T, sample string) string {
	t.Helper()
	_, scrape := d.get("/metrics")
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindStringSubmatch(scrape)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestRestartWithValidSessions: on the real clock, five restarts in a row
// each make no login, serve the keys the first daemon had, check each saved
// session once (getSessionKeyInfo), and answer the first request within
// 50 ms of the socket listening.
func TestRestartWithValidSessions(t *testing.T) {
	d := startDaemon(t, daemonOptions{realClock: true, setup: withStateDir})
	want := map[string]string{"pos": d.key("pos"), "cashier": d.key("cashier")}
	var slowest time.Duration
	for i := 1; i <= 5; i++ {
		d.fake.ResetCounters()
		d = restart(t, d, daemonOptions{noWait: true})
		// "serving" is logged once the socket listens: the restore is done by then.
		d.logs.waitLine(t, 20*time.Second, `"serving"`, func(l string) bool { return strings.Contains(l, `"message":"serving"`) })
		listening := time.Now()
		first := d.key("pos")
		took := time.Since(listening)
		slowest = max(slowest, took)
		if took > 50*time.Millisecond {
			t.Errorf("restart %d: the first key came %v after the socket listened, want ≤ 50ms", i, took)
		}
		d.waitReady(t)
		if first != want["pos"] || d.key("cashier") != want["cashier"] {
			t.Fatalf("restart %d: new keys served after a restart with valid sessions", i)
		}
		if vu, su := logins(d.fake); vu != 0 || su != 0 {
			t.Fatalf("restart %d: %d verifyUser and %d switchUser, want none", i, vu, su)
		}
		if n := d.fake.Calls("getSessionKeyInfo"); n != 2 {
			t.Fatalf("restart %d: %d getSessionKeyInfo for 2 credentials, want one each", i, n)
		}
		if v := d.metric(t, `erply_sessiond_sessions_restored_total{check="valid"}`); v != "2" {
			t.Fatalf("restart %d: sessions_restored_total{check=valid} = %q, want 2", i, v)
		}
	}
	t.Logf("first key after the socket listened: slowest of 5 restarts %v", slowest)
}

// TestRestartsThroughADay: 48 restarts, 30 minutes apart on the fake clock
// (the daemon down in between). A saved session with more than the margin
// left is served again with no login and checked once; one that ran out
// while the daemon was down is not checked at all and costs exactly one
// login per credential. Half the restarts of a day cost nothing.
func TestRestartsThroughADay(t *testing.T) {
	d := startDaemon(t, daemonOptions{setup: withStateDir})
	margin := 60 * time.Second
	restored, loggedIn := 0, 0
	for i := 1; i <= 48; i++ {
		keys := map[string]string{"pos": d.key("pos"), "cashier": d.key("cashier")}
		expires := d.expiresAt(t, "pos")
		if err := d.stop(); err != nil {
			t.Fatal(err)
		}
		d.clk.Advance(30 * time.Minute)
		d.fake.ResetCounters()
		d = restart(t, d, daemonOptions{})
		vu, su := logins(d.fake)
		checks := d.fake.Calls("getSessionKeyInfo")
		same := d.key("pos") == keys["pos"] && d.key("cashier") == keys["cashier"]
		if left := expires.Sub(d.clk.Now()); left > margin {
			restored++
			if vu != 0 || su != 0 || checks != 2 || !same {
				t.Fatalf("restart %d with %v left: %d verifyUser, %d switchUser, %d checks, same keys %v; want 0, 0, 2, true",
					i, left, vu, su, checks, same)
			}
		} else {
			loggedIn++
			if vu != 1 || su != 1 || checks != 0 || same {
				t.Fatalf("restart %d with %v left: %d verifyUser, %d switchUser, %d checks, same keys %v; want 1, 1, 0, false",
					i, left, vu, su, checks, same)
			}
		}
		if !d.fake.SessionValid(d.key("pos")) || !d.fake.SessionValid(d.key("cashier")) {
			t.Fatalf("restart %d serves a key the fake does not accept", i)
		}
	}
	if restored != 24 || loggedIn != 24 {
		t.Fatalf("%d restores and %d logins in a day of 48 restarts, want 24 and 24", restored, loggedIn)
	}
	t.Logf("48 restarts, 30 min apart: %d without a login, %d with one login per credential (without the state directory: 48)", restored, loggedIn)
}

// TestRestartDuringOutage: restarted while Erply answers HTTP 503 to
// everything, the daemon serves the saved key (which the fake still
// accepts) until its expiry less the margin, then 503 with Retry-After;
// once Erply is back, one login per credential and normal service.
func TestRestartDuringOutage(t *testing.T) {
	d := startDaemon(t, daemonOptions{setup: withStateDir})
	saved := map[string]string{"pos": d.key("pos"), "cashier": d.key("cashier")}
	expires := d.expiresAt(t, "pos")
	margin := 60 * time.Second
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	d.fake.Inject(erplytest.Fault{HTTPStatus: http.StatusServiceUnavailable})
	d.clk.Advance(10 * time.Minute)
	d = restart(t, d, daemonOptions{})
	if v := d.metric(t, `erply_sessiond_sessions_restored_total{check="unreachable"}`); v != "2" {
		t.Fatalf("sessions_restored_total{check=unreachable} = %q, want 2\n%s", v, d.logs)
	}

	// Served until the margin, in 5-minute steps: rechecks and the pool's
	// own refresh (from about 40 minutes on) fail all along.
	for {
		for name, key := range saved {
			code, _, body := d.do(http.MethodGet, "/v1/sessions/"+name+"/key", nil)
			if code != http.StatusOK || strings.TrimSpace(body) != key {
				t.Fatalf("%s before expiry less the margin (%v left): %d %q, want 200 with the saved key\n%s",
					d.clk.Now().Format(time.TimeOnly), expires.Sub(d.clk.Now()), code, body, d.logs)
			}
			if !d.fake.SessionValid(key) {
				t.Fatalf("the fake no longer accepts %s's saved key", name)
			}
		}
		next := d.clk.Now().Add(5 * time.Minute)
		if !next.Before(expires.Add(-margin)) {
			break
		}
		d.clk.Set(next)
	}
	d.clk.Set(expires.Add(-margin - time.Second))
	if code, _, body := d.do(http.MethodGet, "/v1/sessions/pos/key", nil); code != http.StatusOK || strings.TrimSpace(body) != saved["pos"] {
		t.Fatalf("one second before the margin: %d %q, want the saved key", code, body)
	}
	if vu, _ := logins(d.fake); vu == 0 {
		t.Fatal("no refresh attempt reached the fake during the outage: the test did not exercise one")
	}

	d.clk.Set(expires.Add(-margin + time.Second))
	code, hdr, body := d.do(http.MethodGet, "/v1/sessions/pos/key", nil)
	retry, err := strconv.Atoi(hdr.Get("Retry-After"))
	if code != http.StatusServiceUnavailable || err != nil || retry < 1 || strings.Contains(body, saved["pos"]) {
		t.Fatalf("inside the margin: %d Retry-After %q %q, want 503 with Retry-After and no key", code, hdr.Get("Retry-After"), body)
	}

	// Erply is back: by Retry-After, one login per credential serves again.
	d.fake.ClearFaults()
	d.fake.ResetCounters()
	d.clk.Advance(time.Duration(retry) * time.Second)
	fresh := map[string]string{}
	d.waitFor(t, 10*time.Second, "fresh keys after the outage", func() bool {
		for _, name := range []string{"pos", "cashier"} {
			code, _, body := d.do(http.MethodGet, "/v1/sessions/"+name+"/key", nil)
			if code != http.StatusOK {
				return false
			}
			fresh[name] = strings.TrimSpace(body)
		}
		return true
	})
	for name, k := range fresh {
		if k == saved[name] || !d.fake.SessionValid(k) {
			t.Fatalf("%s after the outage: the old key, or one the fake does not accept", name)
		}
	}
	if vu, su := logins(d.fake); vu != 1 || su != 1 {
		t.Fatalf("after Erply came back: %d verifyUser and %d switchUser, want one each", vu, su)
	}
	if _, rz, body := d.readyz(t); !rz.Ready {
		t.Fatalf("not ready after Erply came back: %s", body)
	}
}

// TestRestartSavedSessionUnusable: a saved session that cannot be used
// costs exactly one login for its credential and no more; one of another
// identity is not even checked.
func TestRestartSavedSessionUnusable(t *testing.T) {
	const otherCode = "654321"
	posOnly := map[string]string{"SESSIOND_CREDENTIALS": "pos"}
	for _, tc := range []struct {
		name   string
		env    map[string]string // of the first daemon
		change func(d *testDaemon, keys map[string]string) map[string]string
		// what the restart costs
		verifyUser, switchUser, checks int
		reason                         string // the restore's skip reason, or "" for a dead session
		newKey                         string // the credential that must get a new key
	}{
		{
			name: "password session deleted at Erply while down", env: posOnly,
			change: func(d *testDaemon, keys map[string]string) map[string]string {
				d.fake.DeleteSession(keys["pos"])
				return nil
			},
			verifyUser: 1, checks: 1, newKey: "pos",
		},
		{
			name: "pin session deleted at Erply while down",
			change: func(d *testDaemon, keys map[string]string) map[string]string {
				d.fake.DeleteSession(keys["cashier"])
				return nil
			},
			switchUser: 1, checks: 2, newKey: "cashier",
		},
		{
			name: "username changed", env: posOnly,
			change: func(d *testDaemon, _ map[string]string) map[string]string {
				addClerk(d)
				return map[string]string{"SESSIOND_POS_USERNAME": clerkUser, "SESSIOND_POS_PASSWORD_FILE": "", "SESSIOND_POS_PASSWORD": clerkPW}
			},
			verifyUser: 1, reason: state.ReasonIdentity, newKey: "pos",
		},
		{
			name: "client code changed", env: posOnly,
			change: func(d *testDaemon, _ map[string]string) map[string]string {
				d.fake.AddAccount(otherCode).AddUser(erplytest.User{Username: d.user, Password: d.pw, UserID: 6, EmployeeID: 6})
				return map[string]string{"SESSIOND_POS_CLIENT_CODE": otherCode}
			},
			verifyUser: 1, reason: state.ReasonIdentity, newKey: "pos",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDaemon(t, daemonOptions{env: tc.env, setup: withStateDir})
			names := strings.Split(d.env["SESSIOND_CREDENTIALS"], ",")
			keys := map[string]string{}
			for _, n := range names {
				keys[n] = d.key(n)
			}
			if err := d.stop(); err != nil {
				t.Fatal(err)
			}
			env := tc.change(d, keys)
			d.fake.ResetCounters()
			d = restart(t, d, daemonOptions{env: env})
			for _, n := range names {
				k := d.key(n)
				if (k != keys[n]) != (n == tc.newKey) {
					t.Fatalf("%s: key changed %v, want a new key only for %s", n, k != keys[n], tc.newKey)
				}
				if !d.fake.SessionValid(k) {
					t.Fatalf("%s: served a key the fake does not accept", n)
				}
			}
			vu, su := logins(d.fake)
			if checks := d.fake.Calls("getSessionKeyInfo"); vu != tc.verifyUser || su != tc.switchUser || checks != tc.checks {
				t.Fatalf("restart: %d verifyUser, %d switchUser, %d getSessionKeyInfo; want %d, %d, %d\n%s",
					vu, su, checks, tc.verifyUser, tc.switchUser, tc.checks, d.logs)
			}
			if tc.reason != "" {
				if v := d.metric(t, `erply_sessiond_sessions_restore_skipped_total{reason="`+tc.reason+`"}`); v != "1" {
					t.Fatalf("restore_skipped_total{reason=%s} = %q, want 1", tc.reason, v)
				}
				d.logs.waitLine(t, time.Second, "a warning about the stale entry", func(l string) bool {
					return strings.Contains(l, `"level":"warn"`) && strings.Contains(l, "saved session of "+tc.newKey+" not used")
				})
			} else if v := d.metric(t, "erply_sessiond_sessions_restored_dead_total"); v != "1" {
				t.Fatalf("sessions_restored_dead_total = %q, want 1", v)
			}
		})
	}
}

// TestSecondDaemonOnStateDirRefused: a second daemon on a state directory
// another one holds is refused by New, before it listens or logs in, with
// an error naming the variable and saying why; the first keeps serving.
func TestSecondDaemonOnStateDirRefused(t *testing.T) {
	d := startDaemon(t, daemonOptions{realClock: true, setup: withStateDir})
	key := d.key("pos")
	env := d.environ()
	for i, kv := range env {
		if strings.HasPrefix(kv, "SESSIOND_SOCKET=") {
			env[i] = "SESSIOND_SOCKET=" + filepath.Join(d.dir, "t.sock")
		}
	}
	cfg, err := config.Load(env)
	if err != nil {
		t.Fatal(err)
	}
	d.fake.ResetCounters()
	second, err := daemon.New(cfg, daemon.Options{Environ: env})
	if second != nil || !errors.Is(err, state.ErrLocked) {
		t.Fatalf("second daemon on the same state directory: %v, want state.ErrLocked", err)
	}
	var ve *config.ValidationError
	if errors.As(err, &ve) {
		t.Fatal("a held state directory is reported as an invalid configuration: systemd would not retry")
	}
	for _, want := range []string{"SESSIOND_STATE_DIR", d.env["SESSIOND_STATE_DIR"], "held by another erply-sessiond"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n := d.fake.TotalCalls(); n != 0 {
		t.Fatalf("the refused daemon made %d upstream calls", n)
	}
	if d.key("pos") != key {
		t.Fatal("the first daemon's key changed")
	}
}
