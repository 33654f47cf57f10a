package daemon_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// SESSIOND_ENV_FILE_WATCH through the real daemon, on the real clock with a
// short poll interval: the env file is changed the three ways it is changed
// in practice, and the daemon applies it as SIGHUP would.

// envLayout is one way an env file is laid out and changed.
type envLayout struct {
	name string
	// create lays the file out in dir and returns the path the daemon is given.
	create func(t *testing.T, dir string, content []byte) string
	// update changes its content the way its owner does.
	update func(t *testing.T, content []byte)
}

// inPlace: an editor or `echo >>` writing the file itself (same inode).
func inPlace() envLayout {
	var path string
	return envLayout{
		name: "in-place write",
		create: func(t *testing.T, dir string, content []byte) string {
			path = filepath.Join(dir, "env")
			writeFile(t, path, content)
			return path
		},
		update: func(t *testing.T, content []byte) {
			before, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, path, content) // truncates, then writes
			if after, err := os.Stat(path); err != nil || !os.SameFile(before, after) {
				t.Fatalf("the in-place write replaced the file (%v)", err)
			}
		},
	}
}

// renamed: a configuration tool writing a new file and renaming it over.
func renamed() envLayout {
	var path string
	return envLayout{
		name: "rename over",
		create: func(t *testing.T, dir string, content []byte) string {
			path = filepath.Join(dir, "env")
			writeFile(t, path, content)
			return path
		},
		update: func(t *testing.T, content []byte) {
			writeFile(t, path+".new", content)
			if err := os.Rename(path+".new", path); err != nil {
				t.Fatal(err)
			}
		},
	}
}

// kubelet: a mounted ConfigMap. kubelet lays it out as env -> ..data/env,
// ..data -> ..TIMESTAMP, and updates it by writing a new timestamped
// directory, renaming a new ..data symlink over the old one and removing
// the old directory; the path the daemon reads is never written.
func kubelet() envLayout {
	var dir, current string
	n := 0
	version := func(t *testing.T, content []byte) string {
		n++
		ts := fmt.Sprintf("..2026_11_23_08_00_%02d.%d", n, 1000+n)
		if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, ts, "env"), content)
		return ts
	}
	return envLayout{
		name: "kubelet ..data symlink swap",
		create: func(t *testing.T, parent string, content []byte) string {
			dir = filepath.Join(parent, "config")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			current = version(t, content)
			for _, l := range [][2]string{{current, "..data"}, {"..data/env", "env"}} {
				if err := os.Symlink(l[0], filepath.Join(dir, l[1])); err != nil {
					t.Fatal(err)
				}
			}
			return filepath.Join(dir, "env")
		},
		update: func(t *testing.T, content []byte) {
			next := version(t, content)
			if err := os.Symlink(next, filepath.Join(dir, "..data_tmp")); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(filepath.Join(dir, current)); err != nil {
				t.Fatal(err)
			}
			current = next
		},
	}
}

func writeFile(t *testing.T, path string, content []byte) {
	t.Helper()
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startWatched starts a daemon on the real clock whose env file, laid out
// by l with vars, is watched every interval. The clerk user exists at the
// fake.
func startWatched(t *testing.T, l envLayout, interval time.Duration, vars map[string]string) *testDaemon {
	t.Helper()
	return startDaemon(t, daemonOptions{realClock: true, envWatch: interval, setup: func(d *testDaemon) {
		addClerk(d)
		d.env["SESSIOND_ENV_FILE"] = l.create(t, d.dir, envFileContent(vars))
		d.env["SESSIOND_ENV_FILE_WATCH"] = "true"
	}})
}

// withClerk is the starting env file plus the credential clerk.
func withClerk(code string) map[string]string {
	vars := clerkVars(code)
	vars["SESSIOND_CREDENTIALS"] = "pos,cashier,clerk"
	return vars
}

// serves reports whether name's key route answers 200.
func (d *testDaemon) serves(name string) bool {
	code, _, _ := d.do(http.MethodGet, "/v1/sessions/"+name+"/key", nil)
	return code == http.StatusOK
}

// countLines counts the daemon's log lines with message msg.
func (d *testDaemon) countLines(msg string) int {
	return strings.Count(d.logs.String(), `"message":"`+msg+`"`)
}

// TestEnvWatchAppliesChanges: a new credential added to the env file, by
// each of the three ways of changing it, is served within 10 s without a
// signal; the others keep their sessions; one reload.
func TestEnvWatchAppliesChanges(t *testing.T) {
	base := map[string]string{"SESSIOND_CREDENTIALS": "pos,cashier"}
	for _, l := range []envLayout{inPlace(), renamed(), kubelet()} {
		t.Run(l.name, func(t *testing.T) {
			d := startWatched(t, l, 20*time.Millisecond, base)
			keys := map[string]string{"pos": d.key("pos"), "cashier": d.key("cashier")}
			vu := d.fake.Calls("verifyUser")
			changed := time.Now()
			l.update(t, envFileContent(withClerk(d.code)))
			d.waitFor(t, 10*time.Second, "the new credential served", func() bool { return d.serves("clerk") })
			t.Logf("%s: clerk served %v after the change (poll every 20ms)", l.name, time.Since(changed).Round(time.Millisecond))
			for name, k := range keys {
				if d.key(name) != k {
					t.Fatalf("%s got a new key: an unchanged credential must keep its session", name)
				}
			}
			if n := d.fake.Calls("verifyUser") - vu; n != 1 {
				t.Fatalf("%d logins after the change, want clerk's one", n)
			}
			if n := d.countLines("configuration reloaded"); n != 1 {
				t.Fatalf("%d reloads, want 1\n%s", n, d.logs)
			}
			if _, rz, body := d.readyz(t); rz.LastReload == nil || !rz.LastReload.OK {
				t.Fatalf("readyz lastReload after the change: %s", body)
			}
		})
	}
}

// TestEnvWatchRejectsInvalidFile: an invalid env file is rejected and
// logged, /readyz shows lastReload ok:false naming the problem, the running
// configuration keeps serving; the watch goes on and applies the corrected
// file.
func TestEnvWatchRejectsInvalidFile(t *testing.T) {
	l := renamed()
	d := startWatched(t, l, 20*time.Millisecond, map[string]string{"SESSIOND_CREDENTIALS": "pos,cashier"})
	key := d.key("pos")
	bad := withClerk(d.code)
	bad["SESSIOND_CLERK_SESSION_LENGTH"] = "0"
	l.update(t, envFileContent(bad))
	line := d.logs.waitLine(t, 10*time.Second, "the rejection", func(l string) bool {
		return strings.Contains(l, `"message":"reload rejected; the previous configuration keeps running"`)
	})
	if !strings.Contains(line, "SESSIOND_CLERK_SESSION_LENGTH") || !strings.Contains(line, `"level":"error"`) {
		t.Fatalf("the rejection does not name the variable at error level: %s", line)
	}
	code, rz, body := d.readyz(t)
	if code != http.StatusOK || rz.LastReload == nil || rz.LastReload.OK || !strings.Contains(rz.LastReload.Error, "SESSIOND_CLERK_SESSION_LENGTH") {
		t.Fatalf("readyz after an invalid file = %d %s, want ready with lastReload ok:false naming the variable", code, body)
	}
	if d.key("pos") != key || d.serves("clerk") {
		t.Fatal("the rejected file changed what is served")
	}

	l.update(t, envFileContent(withClerk(d.code)))
	d.waitFor(t, 10*time.Second, "the corrected file applied", func() bool { return d.serves("clerk") })
	if _, rz, body := d.readyz(t); rz.LastReload == nil || !rz.LastReload.OK {
		t.Fatalf("readyz after the corrected file: %s", body)
	}
	if d.key("pos") != key {
		t.Fatal("pos got a new key")
	}
}

// TestEnvWatchBurstIsOneReload: 60 in-place writes 5 ms apart, spanning
// several polls, with the file half-written at times, are one reload of the
// final content.
func TestEnvWatchBurstIsOneReload(t *testing.T) {
	l := inPlace()
	d := startWatched(t, l, 100*time.Millisecond, map[string]string{"SESSIOND_CREDENTIALS": "pos,cashier"})
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for i := range 60 {
		vars := withClerk(d.code)
		vars["SESSIOND_CLERK_SESSION_LENGTH"] = fmt.Sprint(600 + i) // the last write: 659
		l.update(t, envFileContent(vars))
		<-tick.C
	}
	d.waitFor(t, 10*time.Second, "the final content applied", func() bool {
		s, err := d.client.Session(t.Context(), "clerk")
		return err == nil && s.ExpiresIn > 658-5 // whole seconds, counted down
	})
	reloads := d.countLines("configuration reloaded") + d.countLines("reload rejected; the previous configuration keeps running")
	if n := d.countLines("env file changed: reloading"); n != 1 || reloads != 1 {
		t.Fatalf("a burst of 60 writes: %d changes seen, %d reloads; want 1 and 1\n%s", n, reloads, d.logs)
	}
}
