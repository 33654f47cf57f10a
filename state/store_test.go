package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
)

// A state directory others could write, or that is not ours or not a
// directory, is refused with an error that says what is wrong and how to fix it.
func TestOpenRefusesUnsafeDirectory(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string
	}{
		{"group-writable", func(t *testing.T, dir string) { mkdir(t, dir, 0o770) }, "writable by its group or by others (mode 0770)"},
		{"world-writable", func(t *testing.T, dir string) { mkdir(t, dir, 0o777) }, "writable by its group or by others (mode 0777)"},
		{"world-writable sticky", func(t *testing.T, dir string) {
			mkdir(t, dir, 0o777)
			if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
				t.Fatal(err)
			}
		}, "writable by its group or by others"},
		{"a file", func(t *testing.T, dir string) {
			if err := os.WriteFile(dir, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is not a directory"},
		{"another user's", func(t *testing.T, dir string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give a directory away")
			}
			mkdir(t, dir, 0o700)
			if err := os.Chown(dir, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}, "belongs to uid 65534, but erply-sessiond runs as uid 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			tc.setup(t, dir)
			s, err := Open(dir, Options{})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, ErrUnsafeDir) {
				t.Errorf("error %v is not ErrUnsafeDir", err)
			}
			if msg := err.Error(); !strings.Contains(msg, dir) || !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not name %s and say %q", msg, dir, tc.want)
			}
		})
	}
}

func mkdir(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// Open creates a missing directory private to the daemon's user.
func TestOpenCreatesPrivateDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("created with mode %04o, want 0700", perm)
	}
}

// A second daemon on the same directory is refused while the first holds
// it, with an error naming the directory; once the first closes, it may.
func TestSecondOpenOnSameDirFails(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	first, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	second, err := Open(dir, Options{})
	if err == nil {
		second.Close()
		t.Fatal("a second Open on the same directory succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "another erply-sessiond") {
		t.Errorf("error %q: want ErrLocked naming %s and another erply-sessiond", err, dir)
	}
	first.Close()
	third, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open after the holder closed: %v", err)
	}
	third.Close()
}

// A bad state file — corrupt, truncated, empty, of another version, with
// another identity's entry or a broken entry — is a finding and an ordinary
// login, never a failed start nor a crash.
func TestBadStateFiles(t *testing.T) {
	// A good file to spoil, from a real run.
	e0 := newEnv(t)
	d0 := e0.start(e0.password1h("pos"))
	d0.key("pos")
	d0.shutdown()
	good, err := os.ReadFile(filepath.Join(e0.dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	withEntry := func(edit func(m map[string]any)) []byte {
		var f map[string]any
		if err := json.Unmarshal(good, &f); err != nil {
			t.Fatal(err)
		}
		edit(f["credentials"].(map[string]any)["pos"].(map[string]any))
		b, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name    string
		content []byte
		reason  string // the pos outcome's skip reason
		finding string
	}{
		{"corrupt", []byte(`{"version": 1, "credentials": {"pos": {"fingerprint": }}}`), ReasonMissing, "corrupt"},
		{"truncated", good[:len(good)/2], ReasonMissing, "corrupt or truncated"},
		{"empty", nil, ReasonMissing, "empty"},
		{"whitespace", []byte("\n \n"), ReasonMissing, "empty"},
		{"not an object", []byte(`[1,2,3]`), ReasonMissing, "corrupt"},
		{"unknown version", bytes.Replace(good, []byte(`"version": 1`), []byte(`"version": 2`), 1), ReasonMissing, "format version 2"},
		{"no version", bytes.Replace(good, []byte(`"version": 1,`), nil, 1), ReasonMissing, "format version none"},
		{"foreign fingerprint", withEntry(func(m map[string]any) { m["fingerprint"] = strings.Repeat("ab", 32) }), ReasonIdentity, "different identity"},
		{"entry without key", withEntry(func(m map[string]any) { m["session"].(map[string]any)["sessionKey"] = "" }), ReasonMissing, "no session key"},
		{"entry of wrong type", withEntry(func(m map[string]any) { m["expiresAt"] = 12 }), ReasonMissing, "unreadable"},
		{"entry expiring before it began", withEntry(func(m map[string]any) { m["expiresAt"] = "2000-01-01T00:00:00Z" }), ReasonMissing, "before the session began"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			mkdir(t, e.dir, 0o700)
			if err := os.WriteFile(filepath.Join(e.dir, FileName), tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			d := e.start(e.password1h("pos"))
			if o := d.outcome("pos"); o.Result != Skipped || o.Reason != tc.reason {
				t.Errorf("outcome %+v, want skipped: %s", o, tc.reason)
			}
			if !containsAny(d.report.Findings, tc.finding) {
				t.Errorf("findings %q: none says %q", d.report.Findings, tc.finding)
			}
			if v, _ := e.logins(); v != 1 {
				t.Errorf("%d verifyUser, want 1 (an ordinary login)", v)
			}
			d.key("pos")
			d.shutdown()
			if recs, findings := e.readState(); len(findings) != 0 || recs["pos"] == nil {
				t.Errorf("the bad file was not replaced by a good one: %d entries, findings %q", len(recs), findings)
			}
		})
	}
}

// state.json is mode 0600 and holds the session keys but never a
// password, PIN or token file's content.
func TestStateFileModeAndNoSecrets(t *testing.T) {
	e := newEnv(t)
	idFile := filepath.Join(t.TempDir(), "identity.jwt")
	idToken := e.fake.IssueIdentityToken(e.code, e.user, 3*time.Hour)
	oauthFile := filepath.Join(t.TempDir(), "oauth.jwt")
	oauthToken := e.fake.IssueOAuthToken(e.code, e.user, 2*time.Hour)
	for f, v := range map[string]string{idFile: idToken, oauthFile: oauthToken} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	inline := e.password1h("inline")
	inline.Password = config.Secret{Value: "inline-Pw-Narwhal-2209-secret", Var: "SESSIOND_INLINE_PASSWORD"}
	e.fake.AddAccount(e.code).AddUser(e.fakeUser("inline@demo.example", inline.Password.Value))
	inline.Username = "inline@demo.example"
	creds := []config.Credential{
		e.password1h("pos"), e.pin1h("cashier", "pos"), inline,
		{Name: "ident", Kind: config.KindIdentity, ClientCode: e.code, APIURL: e.fake.APIURL(),
			Token: config.Secret{File: idFile, Var: "SESSIOND_IDENT_TOKEN"}, SessionLength: 3600},
		{Name: "sso", Kind: config.KindOAuth, ClientCode: e.code, APIURL: e.fake.APIURL(),
			Token: config.Secret{File: oauthFile, Var: "SESSIOND_SSO_TOKEN"}, SessionLength: 3600},
	}
	d := e.start(creds...)
	keys := map[string]string{}
	for _, c := range creds {
		keys[c.Name] = d.key(c.Name)
	}
	d.shutdown()

	path := filepath.Join(e.dir, FileName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("state.json has mode %04o, want 0600", perm)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for what, secret := range map[string]string{"password": e.password, "PIN": e.pin, "inline password": inline.Password.Value,
		"identity token file": idToken, "oauth token file": oauthToken} {
		if bytes.Contains(data, []byte(secret)) {
			t.Errorf("state.json contains the %s", what)
		}
	}
	for name, k := range keys {
		if !bytes.Contains(data, []byte(k)) {
			t.Errorf("state.json lacks %s's session key: the test would not see a secret either", name)
		}
	}
	entries, _ := os.ReadDir(e.dir)
	for _, de := range entries {
		if strings.Contains(de.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", de.Name())
		}
	}

	// Every kind comes back without a login of any kind.
	e.fake.ResetCounters()
	d2 := e.start(creds...)
	for _, c := range creds {
		if o := d2.outcome(c.Name); o.Result != Restored {
			t.Errorf("%s (%s): outcome %+v, want restored", c.Name, c.Kind, o)
		}
		if d2.key(c.Name) != keys[c.Name] {
			t.Errorf("%s (%s): another key after the restart", c.Name, c.Kind)
		}
	}
	for _, call := range []string{"verifyUser", "switchUser", "verifyIdentityToken", "verifyOAuthToken"} {
		if n := e.fake.Calls(call); n != 0 {
			t.Errorf("%d %s after the restart, want 0", n, call)
		}
	}
}

// A saved session comes back exactly as Erply sent it: user fields, JWTs,
// endpoint lists (with their raw records), lifetime and Erply's time.
func TestRoundTrip(t *testing.T) {
	e := newEnv(t)
	d1 := e.start(e.password1h("pos"))
	before, _ := d1.pool.Snapshot("pos")
	e.clk.Advance(time.Minute)
	d1.shutdown()

	recs, findings := e.readState()
	if len(findings) != 0 {
		t.Fatalf("findings in a file just written: %q", findings)
	}
	r := recs["pos"]
	if r.ErplyExpires != before.Session.ServerTime.Unix()+3600 || !r.ExpiresAt.Equal(before.ExpiresAt) ||
		!r.MeasuredAt.Equal(before.ExpiresAt.Add(-time.Hour)) || r.Kind != "password" || r.ClientCode != e.code {
		t.Errorf("record %+v does not match the snapshot (expires %s)", r, before.ExpiresAt)
	}

	d2 := e.start(e.password1h("pos"))
	after, _ := d2.pool.Snapshot("pos")
	if !sameSession(t, before.Session, after.Session) {
		t.Error("the restored session differs from the saved one")
	}
	if len(after.Session.Endpoints) == 0 || len(after.Session.Endpoints["customerRegistryURLs"]) != 3 {
		t.Errorf("endpoint lists lost: %v", after.Session.Endpoints)
	}
	if d := after.ExpiresAt.Sub(before.ExpiresAt); d < -time.Second || d > time.Second {
		t.Errorf("restored expiry %s, saved %s", after.ExpiresAt, before.ExpiresAt)
	}
}

func sameSession(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ja, jb) {
		t.Logf("saved    %s\nrestored %s", ja, jb)
		return false
	}
	return true
}

// A reader reading state.json in a loop while the sessions change 100
// times never sees a partial file; the last change is in the file.
func TestReaderNeverSeesPartialFile(t *testing.T) {
	e := newEnv(t)
	d := e.start(e.password1h("pos"))
	e.clk.Advance(time.Second)
	path := filepath.Join(e.dir, FileName)

	var reads, bad atomic.Int64
	var firstBad atomic.Value
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			b, err := os.ReadFile(path)
			if err == nil {
				recs, findings := parse(b)
				if len(findings) != 0 || recs["pos"] == nil {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, strings.Join(findings, "; "))
				}
			} else {
				bad.Add(1)
				firstBad.CompareAndSwap(nil, err.Error())
			}
			reads.Add(1)
		}
	}()
	var last string
	for range 100 {
		// Erply drops the key and a caller reports it: a new session. (A
		// live key reported over and over makes no login past the pool's
		// bound on forced logins; a dead one ForcedEvery old does.)
		cur := d.key("pos")
		e.fake.DeleteSession(cur)
		e.clk.Advance(pool.ForcedEvery) // also past the rate bound: one write per second
		if _, err := d.pool.Invalidate(t.Context(), "pos", cur); err != nil {
			t.Fatal(err)
		}
		last = d.key("pos")
	}
	e.clk.Advance(time.Second) // the last change's write, past the rate bound
	close(done)
	wg.Wait()
	if bad.Load() != 0 {
		t.Errorf("%d of %d reads saw a partial or unreadable file; first: %v", bad.Load(), reads.Load(), firstBad.Load())
	}
	t.Logf("%d reads during 100 changes", reads.Load())
	if reads.Load() < 100 {
		t.Errorf("only %d reads: the reader did not overlap the writes", reads.Load())
	}
	recs, _ := e.readState()
	if recs["pos"] == nil || recs["pos"].Session.SessionKey != last {
		t.Error("the file does not hold the last key")
	}
	if got := testutil.ToFloat64(d.store.m.writes.WithLabelValues("ok")); got < 100 || got > 102 {
		t.Errorf("%v writes for 100 changes a second apart, want about 100", got)
	}
}

// A storm of changes is one write per MinInterval, and the last change is
// never lost: Close writes it at once.
func TestWritesAreCoalescedAndCloseFlushes(t *testing.T) {
	e := newEnv(t)
	d := e.start(e.password1h("pos"))
	e.clk.Advance(time.Second)
	writes := func() float64 { return testutil.ToFloat64(d.store.m.writes.WithLabelValues("ok")) }
	base := writes()
	for range 20 {
		if _, err := d.pool.Invalidate(t.Context(), "pos", d.key("pos")); err != nil {
			t.Fatal(err)
		}
	}
	if got := writes() - base; got != 0 {
		t.Errorf("%v writes within the interval, want 0 until it ends", got)
	}
	e.clk.Advance(time.Second)
	if got := writes() - base; got != 1 {
		t.Errorf("%v writes for 20 changes in one interval, want 1", got)
	}
	recs, _ := e.readState()
	if recs["pos"].Session.SessionKey != d.key("pos") {
		t.Error("the coalesced write does not hold the last key")
	}

	// One more change, and Close before the interval ends.
	if _, err := d.pool.Invalidate(t.Context(), "pos", d.key("pos")); err != nil {
		t.Fatal(err)
	}
	last := d.key("pos")
	d.shutdown()
	recs, _ = e.readState()
	if recs["pos"].Session.SessionKey != last {
		t.Error("Close lost the last change")
	}
}

// A credential removed by a reload drops out of the file; one whose
// identity changed is not saved under its new identity until it has a
// session of that identity.
func TestReloadDropsAndRebinds(t *testing.T) {
	e := newEnv(t)
	pos, cashier, office := e.password1h("pos"), e.pin1h("cashier", "pos"), e.password1h("office")
	d := e.start(pos, cashier, office)
	oldOffice := d.key("office")
	e.clk.Advance(time.Second)
	if recs, _ := e.readState(); len(recs) != 3 {
		t.Fatalf("%d entries, want 3", len(recs))
	}

	changed := office
	e.fake.AddAccount(e.code).AddUser(e.fakeUser("other@demo.example", e.password))
	changed.Username = "other@demo.example"
	creds := []config.Credential{pos, changed}
	// The Store learns of the new identity first: its current session
	// (the old user's) must not be saved under it.
	d.store.SetCredentials(creds)
	e.clk.Advance(time.Second)
	recs, _ := e.readState()
	if recs["office"] != nil {
		t.Error("the old identity's session was saved under the new identity")
	}
	d.pool.Update(creds)
	d.store.SetCredentials(creds)
	d.waitNewKey("office", oldOffice)
	e.clk.Advance(time.Second)
	recs, _ = e.readState()
	if recs["cashier"] != nil {
		t.Error("a removed credential is still in the file")
	}
	byName := map[string]config.Credential{"pos": pos, "office": changed}
	if r := recs["office"]; r == nil || r.Session.SessionKey != d.key("office") || r.Fingerprint != Fingerprint(changed, byName) {
		t.Error("the new identity's session is not saved under its fingerprint")
	}
}

// Fingerprints change with the identity, never with a secret.
func TestFingerprint(t *testing.T) {
	base := config.Credential{Name: "pos", Kind: config.KindPassword, ClientCode: "1", APIURL: "https://{clientCode}.example/api/",
		Username: "u", Password: config.Secret{Value: "p1"}}
	parent := base
	pin := config.Credential{Name: "cashier", Kind: config.KindPIN, ClientCode: "1", APIURL: base.APIURL, Parent: "pos", PIN: config.Secret{Value: "1111"}}
	tok := config.Credential{Name: "id", Kind: config.KindIdentity, ClientCode: "1", APIURL: base.APIURL, Token: config.Secret{File: "/run/a.jwt"}}
	fp := func(c config.Credential, p config.Credential) string {
		return Fingerprint(c, map[string]config.Credential{p.Name: p, c.Name: c})
	}
	same := []struct {
		name string
		a, b string
	}{
		{"password changed", fp(base, base), fp(with(base, func(c *config.Credential) { c.Password.Value = "p2" }), base)},
		{"session length changed", fp(base, base), fp(with(base, func(c *config.Credential) { c.SessionLength = 60 }), base)},
		{"PIN changed", fp(pin, parent), fp(with(pin, func(c *config.Credential) { c.PIN.Value = "2222" }), parent)},
		{"kind empty is password", fp(base, base), fp(with(base, func(c *config.Credential) { c.Kind = "" }), base)},
	}
	for _, tc := range same {
		if tc.a != tc.b {
			t.Errorf("%s: fingerprint changed", tc.name)
		}
	}
	differ := []struct {
		name string
		a, b string
	}{
		{"username", fp(base, base), fp(with(base, func(c *config.Credential) { c.Username = "v" }), base)},
		{"client code", fp(base, base), fp(with(base, func(c *config.Credential) { c.ClientCode = "2" }), base)},
		{"API URL", fp(base, base), fp(with(base, func(c *config.Credential) { c.APIURL = "https://x/{clientCode}/" }), base)},
		{"kind", fp(tok, base), fp(with(tok, func(c *config.Credential) { c.Kind = config.KindOAuth }), base)},
		{"token file", fp(tok, base), fp(with(tok, func(c *config.Credential) { c.Token.File = "/run/b.jwt" }), base)},
		{"pin's parent", fp(pin, parent), fp(with(pin, func(c *config.Credential) { c.Parent = "office" }), with(parent, func(c *config.Credential) { c.Name = "office" }))},
		{"pin's parent's user", fp(pin, parent), fp(pin, with(parent, func(c *config.Credential) { c.Username = "v" }))},
	}
	for _, tc := range differ {
		if tc.a == tc.b {
			t.Errorf("%s changed but the fingerprint did not", tc.name)
		}
	}
}

func with(c config.Credential, f func(*config.Credential)) config.Credential {
	f(&c)
	return c
}

// ResolveDir prefers SESSIOND_STATE_DIR, then systemd's first state directory.
func TestResolveDir(t *testing.T) {
	cases := []struct {
		env           map[string]string
		dir, variable string
	}{
		{map[string]string{}, "", ""},
		{map[string]string{"STATE_DIRECTORY": "/var/lib/erply-sessiond"}, "/var/lib/erply-sessiond", "STATE_DIRECTORY"},
		{map[string]string{"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/var/lib/a", "STATE_DIRECTORY"},
		{map[string]string{"STATE_DIRECTORY": "/var/lib/a", "SESSIOND_STATE_DIR": "/srv/s"}, "/srv/s", "SESSIOND_STATE_DIR"},
	}
	for _, tc := range cases {
		dir, v := ResolveDir(func(k string) string { return tc.env[k] })
		if dir != tc.dir || v != tc.variable {
			t.Errorf("%v: %q, %q; want %q, %q", tc.env, dir, v, tc.dir, tc.variable)
		}
	}
}

// A write that fails (here: a directory squats state.json, so the rename
// fails) is retried at the rate bound and succeeds once it can; the error
// is counted.
func TestFailedWriteIsRetried(t *testing.T) {
	e := newEnv(t)
	d := e.start(e.password1h("pos"))
	e.clk.Advance(time.Second)
	path := filepath.Join(e.dir, FileName)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(path, "squat"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := d.pool.Invalidate(t.Context(), "pos", d.key("pos")); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(time.Second)
	e.clk.Advance(time.Second)
	// Tried at once, then once a second: at 0, 1 and 2 s after the change.
	if got := testutil.ToFloat64(d.store.m.writes.WithLabelValues("error")); got != 3 {
		t.Errorf("%v failed writes in the 2 s after the change, want 3 (one per interval)", got)
	}
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(time.Second)
	recs, _ := e.readState()
	if recs["pos"] == nil || recs["pos"].Session.SessionKey != d.key("pos") {
		t.Error("the failed write was not retried")
	}
	entries, _ := os.ReadDir(e.dir)
	for _, de := range entries {
		if strings.Contains(de.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind by a failed write", de.Name())
		}
	}
}

// Leftovers of a write cut short are removed at Open.
func TestOpenRemovesTemporaryFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	mkdir(t, dir, 0o700)
	tmp := filepath.Join(dir, FileName+".tmp-123")
	if err := os.WriteFile(tmp, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, Options{Clock: clock.NewFake(start), Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file still there: %v", err)
	}
}
