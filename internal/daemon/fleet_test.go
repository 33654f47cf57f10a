package daemon_test

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisMissing is the loud skip of the daemon's fleet tests.
const redisMissing = "WARNING: SKIPPED: redis-server is not installed (apt-get install redis-server); the daemon's fleet tests need a real Redis process"

// startRedis runs a redis-server without persistence on a Unix socket in
// a temporary directory and returns the socket's path; it is killed at
// the end of the test (after the daemons, whose cleanups run first).
func startRedis(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip(redisMissing)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "r.sock")
	cmd := exec.Command("redis-server", "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", dir, "--loglevel", "warning", "--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	// Ready when it answers PING on the socket.
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: sock, Protocol: 2, DisableIdentity: true, MaxRetries: -1})
	defer rdb.Close()
	deadline := time.Now().Add(5 * time.Second)
	for rdb.Ping(context.Background()).Err() != nil {
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			t.Fatalf("redis-server exited at start: %s", log)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer PING within 5s")
		}
	}
	return sock
}

// writeKeyring writes a keyring of one fresh key with ID id and returns its path.
func writeKeyring(t *testing.T, id string) string {
	t.Helper()
	b := make([]byte, 32)
	_, _ = crand.Read(b)
	p := filepath.Join(t.TempDir(), "fleet.keys")
	if err := os.WriteFile(p, []byte(id+" "+base64.StdEncoding.EncodeToString(b)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fleetStatus is each credential's "fleet" and "fleetError" in /v1/sessions.
func (d *testDaemon) fleetStatus() map[string][2]string {
	d.t.Helper()
	code, body := d.get("/v1/sessions")
	if code != http.StatusOK {
		d.t.Fatalf("/v1/sessions: %d %s", code, body)
	}
	var items []struct {
		Name       string `json:"name"`
		Fleet      string `json:"fleet"`
		FleetError string `json:"fleetError"`
	}
	if err := json.Unmarshal([]byte(body), &items); err != nil {
		d.t.Fatal(err)
	}
	out := map[string][2]string{}
	for _, it := range items {
		out[it.Name] = [2]string{it.Fleet, it.FleetError}
	}
	return out
}

// Three daemons of one fleet (a real redis-server, one fake Erply, one
// password file) make one verifyUser and one switchUser between them and
// serve the same keys; /v1/sessions says "shared". A rotate-password on
// one is adopted by the other two with no login. A fourth daemon whose
// keyring differs logs in on its own, says "local" with the reason, and
// leaves the others' sessions and the shared records untouched.
func TestFleetDaemons(t *testing.T) {
	sock := startRedis(t)
	keys := writeKeyring(t, "k1")
	env := map[string]string{
		"SESSIOND_FLEET_REDIS_URL": "unix://" + sock,
		"SESSIOND_FLEET_KEY_FILE":  keys,
		"SESSIOND_FLEET_NAME":      "shop",
	}
	began := time.Now()
	a := startDaemon(t, daemonOptions{env: env, noWait: true})
	b := startDaemon(t, daemonOptions{sibling: a, noWait: true})
	c := startDaemon(t, daemonOptions{sibling: a, noWait: true})
	fleet := []*testDaemon{a, b, c}
	for _, d := range fleet {
		d.waitReady(t)
	}
	t.Logf("3 daemons ready %s after the first started", time.Since(began).Round(time.Millisecond))
	if v, s := a.fake.Calls("verifyUser"), a.fake.Calls("switchUser"); v != 1 || s != 1 {
		t.Fatalf("3 daemons made %d verifyUser and %d switchUser, want 1 and 1", v, s)
	}
	pos, cashier := a.key("pos"), a.key("cashier")
	for _, d := range fleet {
		if d.key("pos") != pos || d.key("cashier") != cashier {
			t.Fatal("the daemons serve different keys")
		}
		for name, st := range d.fleetStatus() {
			if st != [2]string{"shared", ""} {
				t.Fatalf("%s: /v1/sessions says fleet %q, fleetError %q; want shared", name, st[0], st[1])
			}
		}
	}

	// rotate-password on a: b and c adopt the session changePassword returned.
	code, _, body := a.post("/v1/sessions/pos/rotate-password", "")
	if code != http.StatusOK {
		t.Fatalf("rotate-password: %d %s", code, body)
	}
	rotated := a.key("pos")
	if rotated == pos || !a.fake.SessionValid(rotated) {
		t.Fatal("the rotating daemon does not serve a new valid session")
	}
	turned := time.Now()
	for _, d := range fleet[1:] {
		d.waitFor(t, 2*time.Second, "the rotated session", func() bool { return d.key("pos") == rotated })
	}
	t.Logf("the other two serve the rotated session %s after rotate-password answered", time.Since(turned).Round(time.Millisecond))
	if v := a.fake.Calls("verifyUser"); v != 1 {
		t.Fatalf("verifyUser = %d after the rotation, want still 1", v)
	}
	for _, d := range fleet {
		d.waitFor(t, 2*time.Second, "the pin switched on the rotated session", func() bool {
			k := d.key("cashier")
			return k != cashier && a.fake.SessionValid(k)
		})
	}
	cashier = a.key("cashier")
	for _, d := range fleet[1:] {
		if d.key("cashier") != cashier {
			t.Fatal("the daemons serve different pin keys after the rotation")
		}
	}

	// Another keyring (same key ID, other bytes): local, and nobody else touched.
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: sock, Protocol: 2, DisableIdentity: true})
	defer rdb.Close()
	ctx := context.Background()
	const record = "sessiond:{shop/pos}:session"
	before, err := rdb.HGetAll(ctx, record).Result()
	if err != nil || len(before) == 0 {
		t.Fatalf("no shared record for pos: %v", err)
	}
	pos = rotated
	logins := a.fake.Calls("verifyUser")
	other := startDaemon(t, daemonOptions{sibling: a, env: map[string]string{"SESSIOND_FLEET_KEY_FILE": writeKeyring(t, "k1")}})
	if own := other.key("pos"); own == pos || a.fake.Calls("verifyUser") != logins+1 {
		t.Fatal("the daemon with another keyring did not log in on its own")
	}
	for name, st := range other.fleetStatus() {
		if st[0] != "local" || !strings.Contains(st[1], `does not open with key "k1"`) {
			t.Fatalf("%s: /v1/sessions says fleet %q, fleetError %q; want local, naming the key", name, st[0], st[1])
		}
	}
	after, err := rdb.HGetAll(ctx, record).Result()
	if err != nil || !maps.Equal(before, after) {
		t.Fatal("the daemon with another keyring changed the shared record")
	}
	for _, d := range fleet {
		if d.key("pos") != pos || d.key("cashier") != cashier {
			t.Fatal("a daemon of the fleet lost its session to the one with another keyring")
		}
		if st := d.fleetStatus()["pos"]; st[0] != "shared" {
			t.Fatalf("a daemon of the fleet says %q", st[0])
		}
	}
	code, body = other.get("/metrics")
	if code != http.StatusOK || sample(body, "erply_sessiond_fleet_redis_up") != "1" ||
		sample(body, `erply_sessiond_fleet_decrypt_failures_total{credential="pos"}`) == "0" {
		t.Fatalf("the metrics do not show Redis up and the decrypt failures:\n%s", body)
	}
}

// sample is the value of series in a /metrics body, "0" when absent.
func sample(body, series string) string {
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			return v
		}
	}
	return "0"
}
