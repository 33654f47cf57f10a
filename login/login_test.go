package login_test

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	clk                *clock.Fake
	fake               *erplytest.Server
	up                 *upstream.Client
	code, user, pw, pn string
}

func newEnv(t *testing.T) *env {
	clk := clock.NewFake(time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC))
	fake := erplytest.New(clk)
	t.Cleanup(fake.Close)
	up := upstream.New(upstream.Options{Logger: zerolog.Nop(), RetryMax: 1, RetryWaitMin: time.Millisecond, RetryWaitMax: time.Millisecond})
	t.Cleanup(up.CloseIdleConnections)
	code, user, pw, pin := fake.SeedDemo()
	return &env{clk: clk, fake: fake, up: up, code: code, user: user, pw: pw, pn: pin}
}

func (e *env) password() config.Credential {
	return config.Credential{Name: "pos", Kind: config.KindPassword, ClientCode: e.code, APIURL: e.fake.APIURL(),
		Username: e.user, Password: config.Secret{Value: e.pw, Var: "SESSIOND_POS_PASSWORD"}, SessionLength: 3600}
}

// sessions is a real pool holding the parent credential, for the PIN method.
func (e *env) sessions(t *testing.T, creds ...config.Credential) *pool.Pool {
	p, err := pool.New(pool.Options{Upstream: e.up, MethodFor: login.Methods(e.up), Credentials: creds, Clock: e.clk, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMethodsByKind(t *testing.T) {
	m := login.Methods(newEnv(t).up)
	for kind, want := range map[config.Kind]any{
		config.KindPassword: login.Password{}, "": login.Password{}, config.KindPIN: login.PIN{},
		config.KindIdentity: login.Identity{}, config.KindOAuth: login.OAuth{},
	} {
		got := m(config.Credential{Kind: kind})
		if got == nil {
			t.Fatalf("kind %q: no method", kind)
		}
		switch want.(type) {
		case login.Password:
			_, ok := got.(login.Password)
			if !ok {
				t.Fatalf("kind %q: %T, want Password", kind, got)
			}
		case login.PIN:
			if _, ok := got.(login.PIN); !ok {
				t.Fatalf("kind %q: %T, want PIN", kind, got)
			}
		case login.Identity:
			if _, ok := got.(login.Identity); !ok {
				t.Fatalf("kind %q: %T, want Identity", kind, got)
			}
		case login.OAuth:
			if _, ok := got.(login.OAuth); !ok {
				t.Fatalf("kind %q: %T, want OAuth", kind, got)
			}
		}
	}
	if got := m(config.Credential{Kind: "kerberos"}); got != nil {
		t.Fatalf("unknown kind got a method: %T", got)
	}
}

func TestPasswordAndItsLifetime(t *testing.T) {
	e := newEnv(t)
	g, err := login.Password{Up: e.up}.Login(context.Background(), e.password(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !e.fake.SessionValid(g.Session.SessionKey) || g.Session.SessionLength != 3600 || g.ParentKey != "" {
		t.Fatalf("session valid=%v length=%d parent=%q", e.fake.SessionValid(g.Session.SessionKey), g.Session.SessionLength, g.ParentKey)
	}
	// A reply without sessionLength: the lifetime comes from getSessionKeyInfo.
	e.fake.SetHandler("verifyUser", func(url.Values) (int, []byte) {
		return 200, []byte(`{"status":{"request":"verifyUser","requestUnixTime":` + unix(e.clk) + `,"responseStatus":"ok","errorCode":0},
			"records":[{"sessionKey":"` + g.Session.SessionKey + `","userID":"6","userName":"manager@demo.example"}]}`)
	})
	g2, err := login.Password{Up: e.up}.Login(context.Background(), e.password(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if g2.Session.SessionLength < 3590 || g2.Session.SessionLength > 3600 || e.fake.Calls("getSessionKeyInfo") != 1 {
		t.Fatalf("lifetime %d s from %d getSessionKeyInfo calls, want ~3600 from 1", g2.Session.SessionLength, e.fake.Calls("getSessionKeyInfo"))
	}
}

func unix(c *clock.Fake) string { return strconv.FormatInt(c.Now().Unix(), 10) }

func TestPasswordErrorsNameNoSecret(t *testing.T) {
	e := newEnv(t)
	c := e.password()
	c.Password = config.Secret{File: filepath.Join(t.TempDir(), "missing"), Var: "SESSIOND_POS_PASSWORD"}
	_, err := login.Password{Up: e.up}.Login(context.Background(), c, nil)
	if err == nil || e.fake.Calls("verifyUser") != 0 {
		t.Fatalf("unreadable password file: err %v, %d calls", err, e.fake.Calls("verifyUser"))
	}
	c.Password = config.Secret{Value: "not-the-password"}
	_, err = login.Password{Up: e.up}.Login(context.Background(), c, nil)
	if err == nil {
		t.Fatal("a wrong password logged in")
	}
	if msg := err.Error(); strings.Contains(msg, "not-the-password") {
		t.Fatalf("the error carries the password: %s", msg)
	}
}

func TestPINSwitchesOnTheParentAndRecoversFromADeadParentKey(t *testing.T) {
	e := newEnv(t)
	parent := e.password()
	p := e.sessions(t, parent)
	pin := config.Credential{Name: "cashier", Kind: config.KindPIN, Parent: "pos", PIN: config.Secret{Value: e.pn}, SessionLength: 3600}
	g, err := login.PIN{Up: e.up}.Login(context.Background(), pin, p)
	if err != nil {
		t.Fatal(err)
	}
	ps, _ := p.Snapshot("pos")
	if g.ParentKey != ps.Session.SessionKey || !e.fake.SessionValid(g.Session.SessionKey) {
		t.Fatal("the switch did not report the parent key it was made on")
	}
	// The parent's key dies at Erply (as after a password change): one
	// re-login of the parent, then the switch succeeds on the new key.
	e.fake.DeleteSession(ps.Session.SessionKey)
	verifies := e.fake.Calls("verifyUser")
	g, err = login.PIN{Up: e.up}.Login(context.Background(), pin, p)
	if err != nil {
		t.Fatal(err)
	}
	ps2, _ := p.Snapshot("pos")
	if e.fake.Calls("verifyUser") != verifies+1 || g.ParentKey != ps2.Session.SessionKey || g.ParentKey == ps.Session.SessionKey {
		t.Fatalf("after the parent's key died: %d parent logins (want 1), switched on the new parent key: %v",
			e.fake.Calls("verifyUser")-verifies, g.ParentKey == ps2.Session.SessionKey)
	}
}

func TestIdentityAndOAuth(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		method pool.Method
		token  string
	}{
		{"identity", login.Identity{Up: e.up}, e.fake.IssueIdentityToken(e.code, e.user, time.Hour)},
		{"oauth", login.OAuth{Up: e.up}, e.fake.IssueOAuthToken(e.code, e.user, time.Hour)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(dir, tc.name)
			if err := os.WriteFile(file, []byte(tc.token), 0o600); err != nil {
				t.Fatal(err)
			}
			c := config.Credential{Name: tc.name, Kind: config.Kind(tc.name), ClientCode: e.code, APIURL: e.fake.APIURL(),
				Token: config.Secret{File: file, Var: "SESSIOND_X_TOKEN"}, SessionLength: 3600}
			g, err := tc.method.Login(context.Background(), c, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !e.fake.SessionValid(g.Session.SessionKey) || g.Session.SessionLength <= 0 || g.Session.UserName == "" {
				t.Fatalf("session valid=%v length=%d user=%q", e.fake.SessionValid(g.Session.SessionKey), g.Session.SessionLength, g.Session.UserName)
			}
		})
	}
}
