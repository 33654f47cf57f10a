package password_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// sessionBody is the part of the session JSON the tests look at.
type sessionBody struct {
	SessionKey      string `json:"sessionKey"`
	ExpiresIn       int64  `json:"expiresIn"`
	PasswordExpired bool   `json:"passwordExpired"`
}

type errorBody struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	ErplyCode int    `json:"erplyCode"`
}

func decode[T any](t *testing.T, body string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("%v in %q", err, body)
	}
	return v
}

func expiredGauge(pos, cashier int) string {
	return `
# HELP erply_sessiond_password_expired 1 when the last login reply of the credential said its password expired (isPasswordExpired), else 0 (absent while it has no session).
# TYPE erply_sessiond_password_expired gauge
erply_sessiond_password_expired{credential="cashier"} ` + strconv.Itoa(cashier) + `
erply_sessiond_password_expired{credential="pos"} ` + strconv.Itoa(pos) + `
`
}

// read is one reader's request during the rotation.
type read struct {
	after     bool // started after the rotation answered
	status    int
	key       string
	expiresIn int64 // JSON reads only; -1 for key reads
}

// TestRotation rotates an expired password over the socket while 20
// readers read the session: the flag shows in both JSON routes and the
// gauge and goes back to false; Erply's password, the file (its mode kept)
// and the served session all change together; the pin switches again; no
// reader gets an error or a key inside its margin, and none gets the old
// key once the rotation has answered; no log line shows a password.
func TestRotation(t *testing.T) {
	e := newEnv(t)
	e.fake.SetPasswordExpired(e.code, e.user, true)
	d := e.start(daemonOptions{creds: []config.Credential{e.password("pos"), e.pinOn("cashier", "pos")}, api: true})
	d.open()
	oldKey := d.get("pos").Session.SessionKey
	oldCashier := d.get("cashier").Session.SessionKey

	// Reported: both JSON routes, the gauge, a warning at the login.
	if code, body := d.do(http.MethodGet, "/v1/sessions/pos"); code != 200 || !decode[sessionBody](t, body).PasswordExpired {
		t.Fatalf("GET /v1/sessions/pos = %d %s, want passwordExpired true", code, body)
	}
	list := func() map[string]bool {
		code, body := d.do(http.MethodGet, "/v1/sessions")
		if code != 200 {
			t.Fatalf("list = %d %s", code, body)
		}
		out := map[string]bool{}
		for _, it := range decode[[]struct {
			Name            string `json:"name"`
			PasswordExpired bool   `json:"passwordExpired"`
		}](t, body) {
			out[it.Name] = it.PasswordExpired
		}
		return out
	}
	if l := list(); !l["pos"] || l["cashier"] {
		t.Fatalf("list passwordExpired = %v, want pos only", l)
	}
	if err := testutil.GatherAndCompare(d.reg, strings.NewReader(expiredGauge(1, 0)), "erply_sessiond_password_expired"); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(e.logs.String(), "Erply says the password has expired"); n != 1 {
		t.Fatalf("%d warnings about the expired password after one login, want 1", n)
	}
	verifies, switches := e.fake.Calls("verifyUser"), e.fake.Calls("switchUser")

	// 20 readers, alternating the key and the JSON route.
	var answered atomic.Bool
	stop := make(chan struct{})
	var started, done sync.WaitGroup
	reads := make([][]read, 20)
	for i := range reads {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			first := true
			for n := 0; ; n++ {
				r := read{after: answered.Load(), expiresIn: -1}
				req, _ := http.NewRequest(http.MethodGet, "http://sessiond/v1/sessions/pos/key", nil)
				if n%2 == 1 {
					req.URL.Path = "/v1/sessions/pos"
				}
				res, err := d.http.Do(req)
				if err != nil {
					t.Errorf("reader %d: %v", i, err)
					return
				}
				var b strings.Builder
				_, _ = io.Copy(&b, res.Body)
				res.Body.Close()
				r.status = res.StatusCode
				if n%2 == 1 && r.status == 200 {
					var s sessionBody
					_ = json.Unmarshal([]byte(b.String()), &s)
					r.key, r.expiresIn = s.SessionKey, s.ExpiresIn
				} else {
					r.key = strings.TrimSpace(b.String())
				}
				reads[i] = append(reads[i], r)
				if first {
					first = false
					started.Done()
				}
				select {
				case <-stop:
					if r.after {
						return
					}
				default:
				}
			}
		}()
	}
	started.Wait()
	began := time.Now()
	code, body := d.do(http.MethodPost, "/v1/sessions/pos/rotate-password")
	took := time.Since(began)
	answered.Store(true)
	close(stop)
	done.Wait()
	if code != 200 {
		t.Fatalf("rotate = %d %s", code, body)
	}
	rotated := decode[sessionBody](t, body)

	// Erply, the file and the served session changed together.
	newPW := e.fake.Password(e.code, e.user)
	if newPW == e.pw || e.fileContent() != newPW {
		t.Fatal("the password file does not hold the password Erply now has")
	}
	if fi, err := os.Stat(e.pwFile); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("password file mode = %v, %v; want 0640 kept", fi.Mode(), err)
	}
	if e.nextExists() {
		t.Fatal("PASSWORD_FILE.next left behind")
	}
	if strings.Contains(body, newPW) || strings.Contains(body, e.pw) {
		t.Fatal("the rotation's answer shows a password")
	}
	snap := d.get("pos")
	if snap.Session.Request != "changePassword" || rotated.SessionKey != snap.Session.SessionKey || rotated.PasswordExpired {
		t.Fatalf("served session from %s, answer passwordExpired %v: want changePassword's session",
			snap.Session.Request, rotated.PasswordExpired)
	}
	if code, key := d.do(http.MethodGet, "/v1/sessions/pos/key"); code != 200 || strings.TrimSpace(key) != rotated.SessionKey {
		t.Fatalf("GET key = %d, not the session changePassword returned", code)
	}
	if !e.fake.SessionValid(rotated.SessionKey) || e.fake.SessionValid(oldKey) {
		t.Fatal("at the fake, the new key is not valid or the old one still is")
	}
	// The pin switches again on the new parent session.
	cashier := d.waitFor("cashier", func(s *pool.Snapshot) bool {
		return s.Session != nil && s.Session.SessionKey != oldCashier
	})
	if code, key := d.do(http.MethodGet, "/v1/sessions/cashier/key"); code != 200 || strings.TrimSpace(key) != cashier.Session.SessionKey ||
		!e.fake.SessionValid(cashier.Session.SessionKey) {
		t.Fatalf("cashier key = %d, not its fresh valid session", code)
	}
	// Back to false everywhere.
	if l := list(); l["pos"] || l["cashier"] {
		t.Fatalf("list passwordExpired after the rotation = %v", l)
	}
	if err := testutil.GatherAndCompare(d.reg, strings.NewReader(expiredGauge(0, 0)), "erply_sessiond_password_expired"); err != nil {
		t.Fatal(err)
	}
	// One change, no login for it.
	if n := e.fake.Calls("changePassword"); n != 1 {
		t.Fatalf("changePassword calls = %d, want 1", n)
	}
	if n := e.fake.Calls("verifyUser"); n != verifies {
		t.Fatalf("the rotation made %d logins, want none", n-verifies)
	}
	if n := e.fake.Calls("switchUser") - switches; n != 1 {
		t.Fatalf("the pin switched %d times, want once", n)
	}

	// The readers: never an error, never a key inside its margin, never the
	// old key once the rotation answered.
	total, afterAnswer := 0, 0
	for i, rs := range reads {
		for _, r := range rs {
			total++
			switch {
			case r.status != 200:
				t.Fatalf("reader %d got HTTP %d", i, r.status)
			case r.key != oldKey && r.key != rotated.SessionKey:
				t.Fatalf("reader %d got a key that is neither the old nor the new session's", i)
			case r.expiresIn != -1 && r.expiresIn < 60:
				t.Fatalf("reader %d got a session with %d s left, inside the margin", i, r.expiresIn)
			case r.after && r.key != rotated.SessionKey:
				t.Fatalf("reader %d got the old key after the rotation answered", i)
			}
			if r.after {
				afterAnswer++
			}
		}
	}
	if afterAnswer < 20 {
		t.Fatalf("only %d reads after the rotation answered", afterAnswer)
	}
	t.Logf("rotation answered in %v; %d reads before it answered, %d after", took, total-afterAnswer, afterAnswer)
}

// TestRotateRefusedBeforeErply: a credential that cannot be rotated gets 409
// naming the reason, and Erply hears nothing.
func TestRotateRefusedBeforeErply(t *testing.T) {
	tests := []struct {
		name    string
		cred    func(e *env) config.Credential
		prepare func(t *testing.T, e *env)
		target  string
		status  int
		want    string // in the message
	}{
		{name: "password from the environment", target: "pos", status: 409,
			cred: func(e *env) config.Credential {
				c := e.password("pos")
				c.Password = config.Secret{Value: e.pw, Var: "SESSIOND_POS_PASSWORD"}
				return c
			},
			want: "comes from the environment (SESSIOND_POS_PASSWORD)"},
		{name: "file without write permission", target: "pos", status: 409,
			prepare: func(t *testing.T, e *env) { chmod(t, e.pwFile, 0o440) },
			want:    "is not writable: mode 0440 has no write permission"},
		{name: "read-only directory", target: "pos", status: 409,
			prepare: func(t *testing.T, e *env) { chmod(t, e.dir, 0o555) },
			want:    "of PASSWORD_FILE is not writable"},
		{name: "pin credential", target: "cashier", status: 409, want: "is of kind pin"},
		{name: "unknown credential", target: "nobody", status: 404, want: "unknown credential"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			pos := e.password("pos")
			if tc.cred != nil {
				pos = tc.cred(e)
			}
			d := e.start(daemonOptions{creds: []config.Credential{pos, e.pinOn("cashier", "pos")}, api: true})
			d.open()
			if tc.prepare != nil {
				tc.prepare(t, e)
			}
			key := d.get("pos").Session.SessionKey
			calls := e.fake.TotalCalls()
			code, body := d.do(http.MethodPost, "/v1/sessions/"+tc.target+"/rotate-password")
			eb := decode[errorBody](t, body)
			if code != tc.status || !strings.Contains(eb.Message, tc.want) {
				t.Fatalf("rotate = %d %s, want %d naming %q", code, body, tc.status, tc.want)
			}
			if tc.status == 409 && eb.Error != "cannot_rotate" {
				t.Fatalf("error code %q, want cannot_rotate", eb.Error)
			}
			if n := e.fake.TotalCalls() - calls; n != 0 {
				t.Fatalf("%d calls to Erply, want none", n)
			}
			if e.nextExists() || e.fileContent() != e.pw || d.get("pos").Session.SessionKey != key {
				t.Fatal("a refused rotation changed something")
			}
		})
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// TestRotateErplyRefuses: Erply's refusals answer 502 with erplyCode, remove
// .next and change nothing: the old password still logs in.
func TestRotateErplyRefuses(t *testing.T) {
	for _, code := range []int{1016, 1012, 1010} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			e := newEnv(t)
			d := e.start(daemonOptions{creds: []config.Credential{e.password("pos")}, api: true})
			d.open()
			key := d.get("pos").Session.SessionKey
			e.fake.Inject(erplytest.Fault{Request: "changePassword", ErplyCode: code, Count: 1})
			status, body := d.do(http.MethodPost, "/v1/sessions/pos/rotate-password")
			eb := decode[errorBody](t, body)
			if status != http.StatusBadGateway || eb.Error != "erply_refused" || eb.ErplyCode != code {
				t.Fatalf("rotate = %d %s, want 502 erply_refused with erplyCode %d", status, body, code)
			}
			if e.nextExists() || e.fileContent() != e.pw || e.fake.Password(e.code, e.user) != e.pw {
				t.Fatal("a refused change left .next or changed a password")
			}
			if d.get("pos").Session.SessionKey != key || !e.fake.SessionValid(key) {
				t.Fatal("a refused change replaced or killed the session")
			}
			// The old password still works: a fresh login with the file.
			s, err := d.pool.Invalidate(context.Background(), "pos", key)
			if err != nil || s.Session.SessionKey == key {
				t.Fatalf("login with the old password after the refusal: %v", err)
			}
		})
	}
	t.Run("1016 for a wrong old password, from the fake's own check", func(t *testing.T) {
		e := newEnv(t)
		d := e.start(daemonOptions{creds: []config.Credential{e.password("pos")}, api: true})
		d.open()
		// Someone put another password in the file after the login.
		if err := os.WriteFile(e.pwFile, []byte("not-the-password-1\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		status, body := d.do(http.MethodPost, "/v1/sessions/pos/rotate-password")
		if eb := decode[errorBody](t, body); status != 502 || eb.ErplyCode != 1016 || !strings.Contains(eb.Message, "field oldPassword") {
			t.Fatalf("rotate = %d %s", status, body)
		}
		if e.nextExists() || e.fake.Password(e.code, e.user) != e.pw {
			t.Fatal("the refused change left .next or changed Erply's password")
		}
		if _, err := d.up.VerifyUser(context.Background(), upstream.Account{ClientCode: e.code, APIURL: e.fake.APIURL()}, e.user, e.pw, 0); err != nil {
			t.Fatalf("the old password no longer works: %v", err)
		}
	})
	t.Run("a dead key is replaced by a login and the change tried once more", func(t *testing.T) {
		e := newEnv(t)
		d := e.start(daemonOptions{creds: []config.Credential{e.password("pos")}, api: true})
		d.open()
		e.fake.DeleteSession(d.get("pos").Session.SessionKey)
		verifies := e.fake.Calls("verifyUser")
		status, body := d.do(http.MethodPost, "/v1/sessions/pos/rotate-password")
		if status != 200 {
			t.Fatalf("rotate = %d %s", status, body)
		}
		if n := e.fake.Calls("changePassword"); n != 2 {
			t.Fatalf("changePassword calls = %d, want 2 (1054, then the retry)", n)
		}
		if n := e.fake.Calls("verifyUser") - verifies; n != 1 {
			t.Fatalf("%d logins, want 1", n)
		}
		if e.fileContent() != e.fake.Password(e.code, e.user) || e.nextExists() {
			t.Fatal("file and Erply disagree after the retried change")
		}
	})
}
