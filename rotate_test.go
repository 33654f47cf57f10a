package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/localapi"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/password"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// rotateFixture is a pool with a password credential (pos) and a pin
// (cashier) on the fake Erply, its rotator, and the local API on a socket.
type rotateFixture struct {
	fake   *erplytest.Server
	code   string
	user   string
	pwFile string
	pool   *pool.Pool
	socket string
}

func startRotateFixture(t *testing.T) *rotateFixture {
	t.Helper()
	clk := clock.NewFake(time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC))
	fake := erplytest.New(clk)
	t.Cleanup(fake.Close)
	code, user, pw, pin := fake.SeedDemo()
	dir, err := os.MkdirTemp("", "rp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &rotateFixture{fake: fake, code: code, user: user, pwFile: filepath.Join(dir, "pw"), socket: filepath.Join(dir, "s.sock")}
	if err := os.WriteFile(f.pwFile, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t))
	up := upstream.New(upstream.Options{Logger: log, RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond})
	files := password.NewFiles(log)
	creds := []config.Credential{
		{Name: "pos", Kind: config.KindPassword, ClientCode: code, APIURL: fake.APIURL(), Username: user,
			Password: config.Secret{File: f.pwFile, Var: "SESSIOND_POS_PASSWORD"}, SessionLength: 3600},
		{Name: "cashier", Kind: config.KindPIN, ClientCode: code, APIURL: fake.APIURL(), Parent: "pos",
			PIN: config.Secret{Value: pin, Var: "SESSIOND_CASHIER_PIN"}, SessionLength: 3600},
	}
	p, err := pool.New(pool.Options{MethodFor: files.Methods(login.Methods(up)), Upstream: up, Credentials: creds, Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	rot, err := password.NewRotator(password.Options{Sessions: p, Upstream: up, Files: files, Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	api := localapi.New(localapi.Options{Sessions: p, Clock: clk, Logger: log, Rotator: rot})
	l, err := localapi.ListenUnix(f.socket, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- api.Serve(l, false) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		api.Shutdown(ctx)
		<-served
		rot.Close()
		p.Close()
		up.CloseIdleConnections()
	})
	if err := p.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.pool = p
	return f
}

func TestRotatePasswordCommand(t *testing.T) {
	f := startRotateFixture(t)
	run := func(args ...string) (string, string, error) {
		var out, errOut bytes.Buffer
		err := rotatePasswordCommand(context.Background(), args, []string{"SESSIOND_SOCKET=" + f.socket}, &out, &errOut)
		return out.String(), errOut.String(), err
	}
	exitCode := func(err error) int {
		var ee exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		if err != nil {
			return 1
		}
		return 0
	}

	old := f.fake.Password(f.code, f.user)
	out, _, err := run("pos")
	snap, _ := f.pool.Snapshot("pos")
	wantLine := "pos: password rotated; the new session expires at " + snap.ExpiresAt.UTC().Format(time.RFC3339) + "\n"
	if err != nil || out != wantLine {
		t.Fatalf("rotate-password pos = %q, %v; want %q", out, err, wantLine)
	}
	now := f.fake.Password(f.code, f.user)
	if b, _ := os.ReadFile(f.pwFile); now == old || strings.TrimSpace(string(b)) != now || snap.Session.Request != "changePassword" {
		t.Fatal("the command did not rotate the password")
	}
	if strings.Contains(out, now) || strings.Contains(out, old) {
		t.Fatal("the command printed a password")
	}

	out, _, err = run("-json", "-socket", f.socket, "pos")
	var s struct {
		Name, SessionKey string
		PasswordExpired  bool
	}
	if err != nil || json.Unmarshal([]byte(out), &s) != nil {
		t.Fatalf("-json: %q, %v", out, err)
	}
	if snap, _ := f.pool.Snapshot("pos"); s.Name != "pos" || s.SessionKey != snap.Session.SessionKey {
		t.Fatalf("-json printed %+v, not the new session", s)
	}

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"daemon refuses: pin credential", []string{"cashier"}, 1, "409 cannot_rotate"},
		{"daemon refuses: unknown credential", []string{"nobody"}, 1, "404 unknown_credential"},
		{"no daemon", []string{"-socket", filepath.Join(filepath.Dir(f.socket), "none.sock"), "pos"}, 3, "no such file"},
		{"no name", nil, 2, "want exactly one credential NAME"},
		{"two names", []string{"pos", "cashier"}, 2, "want exactly one credential NAME"},
		{"bad flag", []string{"-nope", "pos"}, 2, "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := run(tc.args...)
			if code := exitCode(err); code != tc.wantCode || !strings.Contains(err.Error()+errOut, tc.wantErr) {
				t.Fatalf("exit %d (%v, stderr %q), want %d with %q", code, err, errOut, tc.wantCode, tc.wantErr)
			}
			if out != "" {
				t.Fatalf("printed %q on failure", out)
			}
		})
	}
	if n := f.fake.Calls("changePassword"); n != 2 {
		t.Fatalf("changePassword calls = %d, want 2", n)
	}
}
