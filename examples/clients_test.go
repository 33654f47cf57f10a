//go:build clients

// Package examples holds process-level tests of the example clients: the PHP
// helper and job (php-cli, php-curl) and the shell job (curl), each run
// against the built daemon and a fake Erply. They need those tools, so they
// build only with -tags clients, which .ci/run passes after installing them.
package examples

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/internal/sessiondtest"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

var binary string

func TestMain(m *testing.M) {
	for _, tool := range []string{"php", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "examples: %s is needed (Debian: apt-get install php-cli php-curl curl)\n", tool)
			os.Exit(1)
		}
	}
	if out, err := exec.Command("php", "-r", `exit(function_exists("curl_init") ? 0 : 1);`).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "examples: PHP has no curl extension (Debian: apt-get install php-curl): %v %s\n", err, out)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "ex")
	if err != nil {
		panic(err)
	}
	binary, err = sessiondtest.Build(context.Background(), dir)
	if err != nil {
		os.RemoveAll(dir)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// job is one way to run the example job: the PHP script or the shell script.
type job struct {
	name string
	argv func(via, credential, request string, params ...string) []string
	// summary reads what the job printed into Erply's status and whether
	// the job said it re-sent.
	summary func(t *testing.T, stdout, stderr string) (responseStatus string, errorCode int, resent bool)
}

var jobs = []job{
	{
		name: "php",
		argv: func(via, credential, request string, params ...string) []string {
			return append([]string{"php", filepath.Join("php", "job.php"), via, credential, request}, params...)
		},
		summary: func(t *testing.T, stdout, _ string) (string, int, bool) {
			var s struct {
				ResponseStatus string `json:"responseStatus"`
				ErrorCode      int    `json:"errorCode"`
				Records        int    `json:"records"`
				Resent         bool   `json:"resent"`
			}
			if err := json.Unmarshal([]byte(stdout), &s); err != nil {
				t.Fatalf("job.php printed %q: %v", stdout, err)
			}
			return s.ResponseStatus, s.ErrorCode, s.Resent
		},
	},
	{
		name: "shell",
		argv: func(via, credential, request string, params ...string) []string {
			return append([]string{"sh", filepath.Join("shell", "erply-call.sh"), via, credential, request}, params...)
		},
		summary: func(t *testing.T, stdout, stderr string) (string, int, bool) {
			var r struct {
				Status struct {
					ResponseStatus string `json:"responseStatus"`
					ErrorCode      int    `json:"errorCode"`
				} `json:"status"`
			}
			if err := json.Unmarshal([]byte(stdout), &r); err != nil {
				t.Fatalf("erply-call.sh printed %q: %v", stdout, err)
			}
			return r.Status.ResponseStatus, r.Status.ErrorCode, strings.Contains(stderr, "re-sent once")
		},
	},
}

// world is a fake Erply and the daemon serving its demo credentials.
type world struct {
	fake   *erplytest.Server
	daemon *sessiondtest.Daemon
}

func newWorld(t *testing.T) *world {
	t.Helper()
	fake := erplytest.New(clock.Real{})
	t.Cleanup(fake.Close)
	d, err := sessiondtest.Start(t.Context(), sessiondtest.Options{
		Binary: binary, Env: sessiondtest.DemoEnv(fake), Socket: filepath.Join(t.TempDir(), "s.sock"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Error(err)
		}
	})
	return &world{fake: fake, daemon: d}
}

// run runs argv with SESSIOND_SOCKET set and returns its output and exit status.
func (w *world) run(t *testing.T, argv []string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "SESSIOND_SOCKET="+w.daemon.Socket)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%v: %v", argv, err)
	}
	return strings.TrimSpace(out.String()), errb.String(), code
}

// TestJobs runs each job both ways — calling Erply itself and through the
// daemon's proxy — with a live key (no login, the daemon's key at Erply)
// and with a key Erply has deleted (exactly one login, the call re-sent
// once, an ok answer). No secret ever travels in a URL.
func TestJobs(t *testing.T) {
	for _, j := range jobs {
		for _, via := range []string{"call", "proxy"} {
			t.Run(j.name+"/"+via, func(t *testing.T) {
				w := newWorld(t)
				logins := w.fake.Calls("verifyUser")
				key, err := w.daemon.Client.Key(t.Context(), "pos")
				if err != nil {
					t.Fatal(err)
				}

				stdout, stderr, code := w.run(t, j.argv(via, "pos", "getProducts", "recordsOnPage=2", "note=a b&c"))
				if code != 0 {
					t.Fatalf("live key: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
				}
				if st, ec, resent := j.summary(t, stdout, stderr); st != "ok" || ec != 0 || resent {
					t.Errorf("live key: status %q, code %d, re-sent %v; want ok, 0, false", st, ec, resent)
				}
				f := w.fake.LastForm("getProducts")
				if f.Get("sessionKey") != key || f.Get("recordsOnPage") != "2" || f.Get("note") != "a b&c" || f.Get("clientCode") == "" {
					t.Errorf("Erply got the daemon's key %v, recordsOnPage %q, note %q, clientCode %q",
						f.Get("sessionKey") == key, f.Get("recordsOnPage"), f.Get("note"), f.Get("clientCode"))
				}

				w.fake.DeleteSession(key)
				before := w.fake.Calls("getProducts")
				stdout, stderr, code = w.run(t, j.argv(via, "pos", "getProducts"))
				if code != 0 {
					t.Fatalf("deleted key: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
				}
				st, ec, resent := j.summary(t, stdout, stderr)
				if st != "ok" || ec != 0 || resent != (via == "call") {
					t.Errorf("deleted key: status %q, code %d, job re-sent %v; want ok, 0, %v", st, ec, resent, via == "call")
				}
				if n := w.fake.Calls("verifyUser") - logins; n != 1 {
					t.Errorf("deleted key: %d logins, want exactly 1", n)
				}
				if n := w.fake.Calls("getProducts") - before; n != 2 {
					t.Errorf("deleted key: Erply saw %d getProducts, want 2 (the refused one and one re-send)", n)
				}
				fresh, err := w.daemon.Client.Key(t.Context(), "pos")
				if err != nil || fresh == key || w.fake.LastForm("getProducts").Get("sessionKey") != fresh {
					t.Errorf("the re-send did not use the daemon's new key (err %v)", err)
				}
				if n := w.fake.QueryStringsSeen(); n != 0 {
					t.Errorf("%d requests to Erply carried a query string (%v): secrets belong in the body", n, w.fake.QueryFieldsSeen())
				}
			})
		}
	}
}

// TestJobsDaemonRefusal: an unknown credential is the daemon's 404
// unknown_credential, reported on standard error with a failing exit
// status, and nothing reaches Erply.
func TestJobsDaemonRefusal(t *testing.T) {
	w := newWorld(t)
	for _, j := range jobs {
		for _, via := range []string{"call", "proxy"} {
			w.fake.ResetCounters()
			stdout, stderr, code := w.run(t, j.argv(via, "nosuch", "getProducts"))
			if code == 0 || !strings.Contains(stderr, "unknown_credential") {
				t.Errorf("%s %s: exit %d, stderr %q, stdout %q; want a failure naming unknown_credential", j.name, via, code, stderr, stdout)
			}
			if n := w.fake.TotalCalls(); n != 0 {
				t.Errorf("%s %s: %d calls reached Erply", j.name, via, n)
			}
		}
	}
}

// TestPHPHelperSessionAndInvalidate: the helper's other methods read the
// daemon's answers by their documented names (a renamed field fails here):
// key, session (sessionKey, clientCode, apiURL, expiresIn) and invalidate
// (compare-and-refresh: a stale report costs no login).
func TestPHPHelperSessionAndInvalidate(t *testing.T) {
	w := newWorld(t)
	script := `require $argv[1];
$sd = new SessionD();
$k = $sd->key('cashier');
$s = $sd->session('cashier');
$n = $sd->invalidate('cashier', 'not-the-current-key');
echo json_encode(['key' => $k, 'same' => $s['sessionKey'] === $k && $n['sessionKey'] === $k,
  'clientCode' => $s['clientCode'], 'apiURL' => $s['apiURL'], 'expiresIn' => $s['expiresIn']]), "\n";`
	logins := w.fake.Calls("switchUser")
	stdout, stderr, code := w.run(t, []string{"php", "-r", script, filepath.Join("php", "SessionD.php")})
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	var got struct {
		Key        string `json:"key"`
		Same       bool   `json:"same"`
		ClientCode string `json:"clientCode"`
		APIURL     string `json:"apiURL"`
		ExpiresIn  int    `json:"expiresIn"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("%q: %v", stdout, err)
	}
	want, _ := w.daemon.Client.Key(t.Context(), "cashier")
	if got.Key != want || !got.Same || got.ClientCode != "104729" || !strings.HasPrefix(got.APIURL, "http://127.0.0.1:") || got.ExpiresIn < 3000 {
		t.Errorf("helper read %+v; want key %v", got, want)
	}
	if n := w.fake.Calls("switchUser") - logins; n != 0 {
		t.Errorf("a report of a key that is not current cost %d logins, want 0", n)
	}
}
