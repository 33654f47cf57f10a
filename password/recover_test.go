package password_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"testing"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/password"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// crashingSessions is the pool as seen by a rotator whose process dies right
// after the rename: Install never happens.
type crashingSessions struct{ password.Sessions }

var errCrash = errors.New("the process died here")

func (crashingSessions) Install(string, pool.Grant, string) (*pool.Snapshot, error) {
	return nil, errCrash
}

// TestCutPoints stops a rotation at each point where a crash can cut it —
// before the call (Erply never heard of it), after the call (Erply changed
// the password, the file still holds the old one, .next the new one), after
// the rename (the new session never installed) — and starts a new process
// on the same files: each recovers a working session with the password
// Erply has, at most one failed login, the user never blocked, no .next.
func TestCutPoints(t *testing.T) {
	tests := []struct {
		name          string
		opts          func(o *daemonOptions)
		wantChanged   bool // Erply's password changed
		wantVerifies  int  // verifyUser calls of the new process
		wantNextAfter bool // .next exists when the first process is gone
	}{
		{name: "before the call", wantVerifies: 1, wantNextAfter: true,
			opts: func(o *daemonOptions) {
				o.wrapUp = func(password.Upstream) password.Upstream {
					return upstreamFunc(func(context.Context, upstream.Account, string, string, string, int) (*upstream.Session, error) {
						return nil, errLost
					})
				}
			}},
		{name: "after the call", wantChanged: true, wantVerifies: 2, wantNextAfter: true,
			opts: func(o *daemonOptions) {
				o.wrapUp = func(up password.Upstream) password.Upstream {
					return upstreamFunc(func(ctx context.Context, a upstream.Account, k, oldPW, newPW string, n int) (*upstream.Session, error) {
						if _, err := up.ChangePassword(ctx, a, k, oldPW, newPW, n); err != nil {
							return nil, err
						}
						return nil, errLost
					})
				}
			}},
		{name: "after the rename", wantChanged: true, wantVerifies: 1,
			opts: func(o *daemonOptions) {
				o.wrapSS = func(s password.Sessions) password.Sessions { return crashingSessions{s} }
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			creds := []config.Credential{e.password("pos"), e.pinOn("cashier", "pos")}
			o := daemonOptions{creds: creds, tag: "first"}
			tc.opts(&o)
			first := e.start(o)
			first.open()
			if _, err := first.rot.Rotate(context.Background(), "pos"); err == nil {
				t.Fatal("the cut rotation reported success")
			}
			first.close()
			if changed := e.fake.Password(e.code, e.user) != e.pw; changed != tc.wantChanged {
				t.Fatalf("Erply's password changed: %v, want %v", changed, tc.wantChanged)
			}
			if e.nextExists() != tc.wantNextAfter {
				t.Fatalf(".next exists: %v, want %v", e.nextExists(), tc.wantNextAfter)
			}

			verifies := e.fake.Calls("verifyUser")
			second := e.start(daemonOptions{creds: creds, tag: "second", seed: 2})
			second.open()
			pos, cashier := second.get("pos"), second.get("cashier")
			if !e.fake.SessionValid(pos.Session.SessionKey) || !e.fake.SessionValid(cashier.Session.SessionKey) {
				t.Fatal("the new process serves a key Erply does not accept")
			}
			if n := e.fake.Calls("verifyUser") - verifies; n != tc.wantVerifies {
				t.Fatalf("the new process made %d verifyUser calls, want %d (at most one refused)", n, tc.wantVerifies)
			}
			if e.fileContent() != e.fake.Password(e.code, e.user) || e.nextExists() {
				t.Fatal("after recovery the file does not hold Erply's password, or .next is left")
			}
			if fi, err := os.Stat(e.pwFile); err != nil || fi.Mode().Perm() != 0o640 {
				t.Fatalf("password file mode = %v, %v; want 0640 kept", fi.Mode(), err)
			}
			if e.fake.Blocked(e.code, e.user) || e.fake.TimesBlocked(e.code, e.user) != 0 {
				t.Fatal("the user was blocked")
			}
		})
	}
}

// TestLostAnswer: when changePassword's answer is lost the outcome is
// unknown: 502 rotation_unknown and .next kept. The next login settles it
// either way: the old password still works (the change did not take) and
// .next goes, or Erply refuses it (1051) and .next takes over.
func TestLostAnswer(t *testing.T) {
	for _, took := range []bool{false, true} {
		name := "the change did not take"
		if took {
			name = "the change took"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			d := e.start(daemonOptions{creds: []config.Credential{e.password("pos")}, api: true,
				wrapUp: func(up password.Upstream) password.Upstream {
					return upstreamFunc(func(ctx context.Context, a upstream.Account, k, oldPW, newPW string, n int) (*upstream.Session, error) {
						if took {
							if _, err := up.ChangePassword(ctx, a, k, oldPW, newPW, n); err != nil {
								return nil, err
							}
						}
						return nil, errLost
					})
				}})
			d.open()
			key := d.get("pos").Session.SessionKey
			status, body := d.do(http.MethodPost, "/v1/sessions/pos/rotate-password")
			if eb := decode[errorBody](t, body); status != http.StatusBadGateway || eb.Error != "rotation_unknown" || eb.ErplyCode != 0 {
				t.Fatalf("rotate = %d %s, want 502 rotation_unknown", status, body)
			}
			if !e.nextExists() || e.fileContent() != e.pw {
				t.Fatal("with the outcome unknown, .next must be kept and the file untouched")
			}
			// A caller meets 1054 with the key (or not) and reports it.
			verifies := e.fake.Calls("verifyUser")
			s, err := d.pool.Invalidate(context.Background(), "pos", key)
			if err != nil {
				t.Fatalf("the login after the lost answer failed: %v", err)
			}
			if !e.fake.SessionValid(s.Session.SessionKey) || e.nextExists() || e.fileContent() != e.fake.Password(e.code, e.user) {
				t.Fatal("the login did not settle the rotation")
			}
			want := 1
			if took {
				want = 2 // the old password refused once, then .next
			}
			if n := e.fake.Calls("verifyUser") - verifies; n != want {
				t.Fatalf("%d verifyUser calls, want %d", n, want)
			}
			// The settled leftover does not block the next rotation (which
			// meets the same lost answer here).
			if status, body := d.do(http.MethodPost, "/v1/sessions/pos/rotate-password"); status != http.StatusBadGateway {
				t.Fatalf("second rotate = %d %s", status, body)
			}
		})
	}
}

// TestLeftoverSettledBeforeRotating: a .next found when a rotation starts
// (an earlier one whose answer was lost) is settled by one login before the
// new change; the new change never overwrites a .next that may hold the
// only copy of the password.
func TestLeftoverSettledBeforeRotating(t *testing.T) {
	e := newEnv(t)
	d := e.start(daemonOptions{creds: []config.Credential{e.password("pos")}})
	d.open()
	// An earlier change that took, whose answer and rename were lost.
	real := "Earlier-rotation-pw-1"
	e.fake.ChangePassword(e.code, e.user, real) // deletes the served session, as changePassword does
	if err := os.WriteFile(e.pwFile+password.NextSuffix, []byte(real+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.secretsNeverShown = append(e.secretsNeverShown, real)
	snap, err := d.rot.Rotate(context.Background(), "pos")
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	now := e.fake.Password(e.code, e.user)
	if now == real || e.fileContent() != now || e.nextExists() || snap.Session.Request != "changePassword" {
		t.Fatal("the leftover was not settled before a new change")
	}
	if e.fake.Blocked(e.code, e.user) {
		t.Fatal("blocked")
	}
}

// TestNextRefusedToo: when .next is refused as well it is removed, so that
// later retries cost one failed attempt each, not two.
func TestNextRefusedToo(t *testing.T) {
	e := newEnv(t)
	e.fake.ChangePassword(e.code, e.user, "Set-by-an-admin-1")
	if err := os.WriteFile(e.pwFile+password.NextSuffix, []byte("Neither-this-one-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.secretsNeverShown = append(e.secretsNeverShown, "Set-by-an-admin-1", "Neither-this-one-2")
	d := e.start(daemonOptions{creds: []config.Credential{e.password("pos")}})
	d.open()
	s, _ := d.pool.Snapshot("pos")
	if upstream.CodeOf(s.LastError) != upstream.CodeLoginFailed || s.State != pool.StateExpired {
		t.Fatalf("state %s, error %v: want expired with 1051", s.State, s.LastError)
	}
	if n := e.fake.Calls("verifyUser"); n != 2 || e.nextExists() || e.fileContent() != e.pw {
		t.Fatalf("%d verifyUser calls, .next exists %v: want 2 and .next removed, the file kept", n, e.nextExists())
	}
}
