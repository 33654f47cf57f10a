package daemon_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// Reload (SIGHUP) tests through the running daemon: the env file named by
// SESSIOND_ENV_FILE and the _FILE secrets are re-read.

const (
	clerkUser = "clerk@demo.example"
	clerkPW   = "clerk-password-93f0a1"
)

// writeEnvFile writes KEY=VALUE lines to path, replacing it atomically so
// that a reload never reads half a file.
func writeEnvFile(t *testing.T, path string, vars map[string]string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, envFileContent(vars), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// envFileContent renders vars as an env file, sorted by name.
func envFileContent(vars map[string]string) []byte {
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString("# erply-sessiond env file written by the test\n\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q\n", k, vars[k])
	}
	return []byte(b.String())
}

// readyz is the /readyz answer.
type readyz struct {
	Ready       bool `json:"ready"`
	Credentials map[string]struct {
		State string `json:"state"`
		Error string `json:"error"`
	} `json:"credentials"`
	LastReload *struct {
		OK    bool      `json:"ok"`
		Error string    `json:"error"`
		At    time.Time `json:"at"`
	} `json:"lastReload"`
}

func (d *testDaemon) readyz(t *testing.T) (int, readyz, string) {
	t.Helper()
	code, body := d.get("/readyz")
	var rz readyz
	jsonBody(t, body, &rz)
	return code, rz, body
}

// reload does what SIGHUP does (main calls Reload on it) and returns
// /readyz once it is done: Reload returns when the new configuration is in
// place (or rejected), without waiting for the logins it started.
func (d *testDaemon) reload(t *testing.T) readyz {
	t.Helper()
	_ = d.dm.Reload() // a rejection shows in lastReload, which the callers check
	_, rz, _ := d.readyz(t)
	return rz
}

// state returns a credential's state from GET /v1/sessions ("" if absent).
func (d *testDaemon) state(t *testing.T, name string) string {
	t.Helper()
	_, body := d.get("/v1/sessions")
	var list []map[string]any
	jsonBody(t, body, &list)
	for _, it := range list {
		if it["name"] == name {
			return it["state"].(string)
		}
	}
	return ""
}

func clerkVars(code string) map[string]string {
	return map[string]string{
		"SESSIOND_CLERK_CLIENT_CODE": code,
		"SESSIOND_CLERK_USERNAME":    clerkUser,
		"SESSIOND_CLERK_PASSWORD":    clerkPW,
	}
}

func addClerk(d *testDaemon) {
	d.fake.AddAccount(d.code).AddUser(erplytest.User{Username: clerkUser, Password: clerkPW, UserID: 9,
		EmployeeID: 11, EmployeeName: "Clara Clerk", GroupID: 3, GroupName: "Cashiers"})
}

func TestReload(t *testing.T) {
	var envFile, cashierSink string
	base := map[string]string{"SESSIOND_CREDENTIALS": "pos,cashier"}
	d := startDaemon(t, daemonOptions{setup: func(d *testDaemon) {
		addClerk(d)
		envFile = filepath.Join(d.dir, "env")
		cashierSink = filepath.Join(d.dir, "cashier.key")
		base["SESSIOND_CASHIER_SINK_FILE"] = cashierSink
		writeEnvFile(t, envFile, base)
		d.env["SESSIOND_ENV_FILE"] = envFile
	}})
	posKey, cashierKey := d.key("pos"), d.key("cashier")
	vu, su := d.fake.Calls("verifyUser"), d.fake.Calls("switchUser")
	if b, err := os.ReadFile(cashierSink); err != nil || string(b) != cashierKey+"\n" {
		t.Fatalf("the env file's SINK_FILE is not applied: %q %v", b, err)
	}
	keys := map[string]string{"pos": posKey, "cashier": cashierKey}
	unchanged := func(step string, names ...string) {
		t.Helper()
		for _, n := range names {
			if d.key(n) != keys[n] {
				t.Fatalf("%s: unchanged credential %s got a new key", step, n)
			}
		}
	}

	// Add: clerk logs in once, its routes serve; nothing else logs in.
	withClerk := map[string]string{"SESSIOND_CREDENTIALS": "pos,cashier,clerk", "SESSIOND_CASHIER_SINK_FILE": cashierSink}
	for k, v := range clerkVars(d.code) {
		withClerk[k] = v
	}
	writeEnvFile(t, envFile, withClerk)
	if rz := d.reload(t); !rz.LastReload.OK || rz.LastReload.Error != "" {
		t.Fatalf("adding a credential: lastReload = %+v", rz.LastReload)
	}
	d.waitFor(t, 10*time.Second, "clerk to log in", func() bool { return d.state(t, "clerk") == "ok" })
	clerkKey := d.key("clerk")
	if !d.fake.SessionValid(clerkKey) {
		t.Fatal("clerk's key is not live at the fake")
	}
	if _, body := d.get("/v1/sessions/clerk"); !strings.Contains(body, `"employeeName":"Clara Clerk"`) {
		t.Fatalf("clerk session = %s", body)
	}
	if n := d.fake.Calls("verifyUser"); n != vu+1 {
		t.Fatalf("verifyUser calls after adding one credential = %d, want %d", n, vu+1)
	}
	if d.fake.Calls("switchUser") != su {
		t.Fatal("adding a credential re-logged the unchanged pin credential")
	}
	unchanged("after add", "pos", "cashier")
	if !strings.Contains(d.logs.String(), `"credentials":["pos","cashier","clerk"]`) {
		t.Fatalf("no reload log line naming the credentials:\n%s", d.logs)
	}

	// Remove: cashier answers 404 from then on; its sink file stays.
	withoutCashier := map[string]string{"SESSIOND_CREDENTIALS": "pos,clerk"}
	for k, v := range clerkVars(d.code) {
		withoutCashier[k] = v
	}
	writeEnvFile(t, envFile, withoutCashier)
	// The process environment still has SESSIOND_CREDENTIALS=pos,cashier: the file wins.
	if rz := d.reload(t); !rz.LastReload.OK {
		t.Fatalf("removing a credential: lastReload = %+v", rz.LastReload)
	}
	for _, p := range []string{"/v1/sessions/cashier/key", "/v1/sessions/cashier"} {
		if code, body := d.get(p); code != http.StatusNotFound || strings.Contains(body, cashierKey) {
			t.Fatalf("GET %s after removal = %d %q, want 404", p, code, body)
		}
	}
	if d.state(t, "cashier") != "" {
		t.Fatal("the list still shows the removed credential")
	}
	code, rz, _ := d.readyz(t)
	if _, ok := rz.Credentials["cashier"]; ok || code != http.StatusOK || !rz.Ready {
		t.Fatalf("readyz after removal = %d %+v", code, rz)
	}
	if b, err := os.ReadFile(cashierSink); err != nil || string(b) != cashierKey+"\n" {
		t.Fatalf("the removed credential's sink file changed: %q %v", b, err)
	}
	unchanged("after remove", "pos")
	if d.key("clerk") != clerkKey || d.fake.Calls("verifyUser") != vu+1 {
		t.Fatal("removing a credential re-logged the others")
	}

	// Invalid: rejected, the previous configuration keeps serving.
	invalid := map[string]string{"SESSIOND_POS_SESSION_LENGTH": "0"}
	for k, v := range withoutCashier {
		invalid[k] = v
	}
	invalid["SESSIOND_CREDENTIALS"] = "pos,clerk,cashier2"
	writeEnvFile(t, envFile, invalid)
	rz = d.reload(t)
	if rz.LastReload.OK || !strings.Contains(rz.LastReload.Error, "SESSIOND_POS_SESSION_LENGTH") {
		t.Fatalf("invalid env file: lastReload = %+v, want ok:false naming the variable", rz.LastReload)
	}
	code, rz, body := d.readyz(t)
	if code != http.StatusOK || !rz.Ready || rz.LastReload.OK {
		t.Fatalf("readyz after a rejected reload = %d %s", code, body)
	}
	if strings.Contains(body, clerkPW) || strings.Contains(d.logs.String(), clerkPW) {
		t.Fatal("a rejected reload shows the env file's password")
	}
	if code, _ := d.get("/v1/sessions/cashier2/key"); code != http.StatusNotFound {
		t.Fatalf("a credential of the rejected file is served: %d", code)
	}
	unchanged("after invalid", "pos")
	if d.key("clerk") != clerkKey || d.fake.Calls("verifyUser") != vu+1 {
		t.Fatal("a rejected reload changed sessions")
	}
	if !strings.Contains(d.logs.String(), "reload rejected; the previous configuration keeps running") {
		t.Fatalf("the rejection is not logged:\n%s", d.logs)
	}

	// Changed setting: clerk logs in anew with the new length; pos keeps its session.
	changed := map[string]string{"SESSIOND_CLERK_SESSION_LENGTH": "1800"}
	for k, v := range withoutCashier {
		changed[k] = v
	}
	writeEnvFile(t, envFile, changed)
	if rz := d.reload(t); !rz.LastReload.OK {
		t.Fatalf("changing a credential: lastReload = %+v", rz.LastReload)
	}
	d.waitFor(t, 10*time.Second, "clerk's new session", func() bool {
		k, err := d.client.Key(t.Context(), "clerk")
		return err == nil && k != clerkKey
	})
	sess, err := d.client.Session(t.Context(), "clerk")
	if err != nil || sess.ExpiresIn != 1800 {
		t.Fatalf("clerk after the change: %+v %v, want expiresIn 1800", sess, err)
	}
	if d.key("pos") != posKey || d.fake.Calls("verifyUser") != vu+2 {
		t.Fatalf("verifyUser calls = %d, want %d (clerk only)", d.fake.Calls("verifyUser"), vu+2)
	}

	// A changed PASSWORD_FILE: no login at reload, used by the next login.
	const newPW = "manager-password-rotated"
	d.fake.ChangePassword(d.code, d.user, newPW) // Erply drops pos's sessions
	if err := os.WriteFile(d.pwFile, []byte(newPW+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if rz := d.reload(t); !rz.LastReload.OK {
		t.Fatalf("after the password change: lastReload = %+v", rz.LastReload)
	}
	if d.key("pos") != posKey || d.fake.Calls("verifyUser") != vu+2 {
		t.Fatal("a changed secret file caused a login at reload")
	}
	s, err := d.client.Invalidate(t.Context(), "pos", posKey)
	if err != nil || s.SessionKey == posKey || !d.fake.SessionValid(s.SessionKey) {
		t.Fatalf("invalidate after the password change: %v", err)
	}
	if got := d.fake.LastForm("verifyUser").Get("password"); got != newPW {
		t.Fatal("the new login did not use the new password file")
	}
	if d.fake.Calls("verifyUser") != vu+3 {
		t.Fatalf("verifyUser calls = %d, want %d", d.fake.Calls("verifyUser"), vu+3)
	}
}

// TestReloadRetriesRefusedSecret: a credential refused for a wrong password
// file logs in at once when SIGHUP follows the fix, without waiting out its
// backoff (the clock does not move).
func TestReloadRetriesRefusedSecret(t *testing.T) {
	var clerkFile string
	d := startDaemon(t, daemonOptions{
		env: map[string]string{"SESSIOND_CREDENTIALS": "pos,cashier,clerk", "SESSIOND_CLERK_USERNAME": clerkUser, "SESSIOND_CLERK_CLIENT_CODE": "104729"},
		setup: func(d *testDaemon) {
			addClerk(d)
			clerkFile = filepath.Join(d.dir, "clerk.password")
			if err := os.WriteFile(clerkFile, []byte("not-the-password\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			d.env["SESSIOND_CLERK_PASSWORD_FILE"] = clerkFile
		},
	})
	if code, _ := d.get("/v1/sessions/clerk/key"); code != http.StatusServiceUnavailable {
		t.Fatalf("clerk with a wrong password = %d, want 503", code)
	}
	failed := d.fake.Calls("verifyUser")
	// No new attempt before the backoff, however often it is asked for.
	for range 5 {
		d.get("/v1/sessions/clerk/key")
	}
	if d.fake.Calls("verifyUser") != failed {
		t.Fatal("a refused credential was retried on demand: Erply would block the user")
	}
	if err := os.WriteFile(clerkFile, []byte(clerkPW+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if rz := d.reload(t); !rz.LastReload.OK {
		t.Fatalf("lastReload = %+v", rz.LastReload)
	}
	d.waitFor(t, 10*time.Second, "clerk to log in after the fix", func() bool { return d.state(t, "clerk") == "ok" })
	if k := d.key("clerk"); !d.fake.SessionValid(k) {
		t.Fatal("clerk's key is not live")
	}
	if d.fake.Calls("verifyUser") != failed+1 {
		t.Fatalf("verifyUser calls = %d, want %d", d.fake.Calls("verifyUser"), failed+1)
	}
	if d.fake.Blocked(d.code, clerkUser) {
		t.Fatal("the clerk got blocked")
	}
}

// TestReloadLogLevel: SESSIOND_LOG_LEVEL in the env file applies at each
// reload, both ways: the per-request debug line is written exactly for the
// requests made while the level is debug.
func TestReloadLogLevel(t *testing.T) {
	var envFile string
	d := startDaemon(t, daemonOptions{env: map[string]string{"SESSIOND_LOG_LEVEL": "info"}, setup: func(d *testDaemon) {
		envFile = filepath.Join(d.dir, "env")
		writeEnvFile(t, envFile, map[string]string{"SESSIOND_LOG_LEVEL": "info"})
		d.env["SESSIOND_ENV_FILE"] = envFile
	}})
	setLevel := func(level string) {
		t.Helper()
		writeEnvFile(t, envFile, map[string]string{"SESSIOND_LOG_LEVEL": level})
		if rz := d.reload(t); !rz.LastReload.OK {
			t.Fatalf("reload to %s: %+v", level, rz.LastReload)
		}
	}
	logged := func(path string) func(string) bool {
		return func(l string) bool { return strings.Contains(l, `"message":"request"`) && strings.Contains(l, path) }
	}
	// One kept-alive connection: a request's line, if any, is written
	// before the next request on it is read.
	d.get("/healthz") // at info
	setLevel("debug")
	d.get("/readyz")
	d.logs.waitLine(t, 10*time.Second, "the /readyz request at debug", logged("/readyz"))
	setLevel("info")
	d.get("/v1/sessions")
	setLevel("debug")
	d.get("/metrics")
	d.logs.waitLine(t, 10*time.Second, "the /metrics request at debug", logged("/metrics"))
	for _, path := range []string{"/healthz", "/v1/sessions"} {
		if strings.Contains(d.logs.String(), `"route":"GET `+path+`"`) {
			t.Errorf("the request to %s made at info was logged at debug", path)
		}
	}
	if !strings.Contains(d.logs.String(), `"route":"GET /readyz"`) {
		t.Fatalf("the request lines do not name the route as this test expects:\n%s", d.logs)
	}
}

// reloadNoPanic is reload for tests of the crash of issue 10: a panic in
// Reload (SIGHUP's path) fails the test instead of the test binary, as it
// would have killed the daemon.
func (d *testDaemon) reloadNoPanic(t *testing.T) readyz {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("Reload panicked, which kills the daemon: %v\n%s", r, debug.Stack())
		}
	}()
	return d.reload(t)
}

// alive fails the test if Run has returned.
func (d *testDaemon) alive(t *testing.T) {
	t.Helper()
	select {
	case err := <-d.done:
		d.done <- err
		t.Fatalf("the daemon stopped: %v\n%s", err, d.logs)
	default:
	}
	if code, body := d.get("/healthz"); code != http.StatusOK {
		t.Fatalf("healthz = %d %s", code, body)
	}
}

// TestReloadChangeAndAdd is the operator's reload of issue 10 that killed
// the daemon: SESSIOND_CREDENTIALS=pos becomes pos,pos_2 in the env file,
// with pos's SESSION_LENGTH changed to 1800 and pos_2's settings, in one
// reload. The daemon stays up, pos logs in anew with the new length, pos_2
// logs in, and both serve live keys.
func TestReloadChangeAndAdd(t *testing.T) {
	var envFile string
	d := startDaemon(t, daemonOptions{
		env: map[string]string{"SESSIOND_CREDENTIALS": "pos", "SESSIOND_CASHIER_KIND": "", "SESSIOND_CASHIER_PARENT": "", "SESSIOND_CASHIER_PIN": ""},
		setup: func(d *testDaemon) {
			addClerk(d)
			envFile = filepath.Join(d.dir, "env")
			writeEnvFile(t, envFile, map[string]string{"SESSIOND_CREDENTIALS": "pos"})
			d.env["SESSIOND_ENV_FILE"] = envFile
		},
	})
	posKey := d.key("pos")
	writeEnvFile(t, envFile, map[string]string{
		"SESSIOND_CREDENTIALS":          "pos,pos_2",
		"SESSIOND_POS_SESSION_LENGTH":   "1800",
		"SESSIOND_POS_2_CLIENT_CODE":    d.code,
		"SESSIOND_POS_2_USERNAME":       clerkUser,
		"SESSIOND_POS_2_PASSWORD":       clerkPW,
		"SESSIOND_POS_2_SESSION_LENGTH": "900",
	})
	d.clk.Advance(time.Minute)
	rz := d.reloadNoPanic(t)
	if !rz.LastReload.OK {
		t.Fatalf("lastReload = %+v", rz.LastReload)
	}
	if !rz.LastReload.At.Equal(d.clk.Now()) {
		t.Errorf("lastReload.at = %v, want the daemon's clock's %v", rz.LastReload.At, d.clk.Now())
	}
	d.alive(t)
	d.waitFor(t, 10*time.Second, "pos's session of 1800 s and pos_2's first", func() bool {
		pos, err := d.client.Session(t.Context(), "pos")
		if err != nil || pos.ExpiresIn != 1800 {
			return false
		}
		pos2, err := d.client.Session(t.Context(), "pos_2")
		return err == nil && pos2.ExpiresIn == 900
	})
	for _, name := range []string{"pos", "pos_2"} {
		if k := d.key(name); !d.fake.SessionValid(k) || k == posKey {
			t.Fatalf("%s serves a key that is dead at the fake or pos's old one", name)
		}
	}
	if code, rz, body := d.readyz(t); code != http.StatusOK || !rz.Ready || len(rz.Credentials) != 2 {
		t.Fatalf("readyz after the reload = %d %s", code, body)
	}
	d.alive(t)
}
