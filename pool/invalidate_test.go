package pool_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// Regression (found by the fault suite, TestFaultPasswordChangedUpstream):
// after a password change upstream a caller reports the dead key, the
// re-login is refused (the file still has the old password), and the pool
// went on serving the dead key to everyone until its local expiry.
func TestInvalidateFailedReloginStopsServingDeadKey(t *testing.T) {
	e := newEnv(t)
	e.start(e.password1h("pos"))
	e.open()
	k0 := e.get("pos").Session.SessionKey
	e.fake.ChangePassword(e.code, e.user, "changed-by-admin")

	// Many callers report the same dead key at once: one login, one check.
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.pool.Invalidate(context.Background(), "pos", k0)
			if !errors.Is(err, upstream.ErrLoginRefused) {
				t.Errorf("Invalidate = %v, want the refused login", err)
			}
		}()
	}
	wg.Wait()
	if n := e.fake.Calls("verifyUser"); n != 2 {
		t.Errorf("%d verifyUser calls, want 2 (start, one re-login)", n)
	}
	if n := e.fake.Calls("getSessionKeyInfo"); n != 1 {
		t.Errorf("%d getSessionKeyInfo calls, want 1", n)
	}
	s, err := e.pool.Get(context.Background(), "pos")
	var ue *pool.UnavailableError
	if !errors.As(err, &ue) || !errors.Is(err, upstream.ErrLoginRefused) || ue.RetryAfter <= 0 {
		key := "none"
		if s != nil && s.Session != nil {
			key = pool.Fingerprint(s.Session.SessionKey)
		}
		t.Fatalf("Get after the failed re-login = key %s, %v; want *UnavailableError with the refused login", key, err)
	}
	if snap, _ := e.pool.Snapshot("pos"); snap.State != pool.StateExpired {
		t.Fatalf("state = %s, want expired", snap.State)
	}
}

// A report is checked, not trusted: when the re-login fails but Erply
// still accepts the reported key (or cannot be asked), it is still served.
func TestInvalidateFailedReloginKeepsLiveKey(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault erplytest.Fault
	}{
		{"login refused, key alive", erplytest.Fault{Request: "verifyUser", ErplyCode: upstream.CodeLoginFailed}},
		{"Erply down", erplytest.Fault{HTTPStatus: 503}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.start(e.password1h("pos"))
			e.open()
			k0 := e.get("pos").Session.SessionKey
			e.fake.Inject(tc.fault)
			if _, err := e.pool.Invalidate(context.Background(), "pos", k0); err == nil {
				t.Fatal("Invalidate succeeded under the fault")
			}
			if got := e.get("pos").Session.SessionKey; got != k0 {
				t.Fatal("the key changed")
			}
			if s, _ := e.pool.Snapshot("pos"); s.State != pool.StateFailing {
				t.Fatalf("state = %s, want failing (still serving)", s.State)
			}
		})
	}
}
