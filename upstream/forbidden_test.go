package upstream_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// TestForbiddenWithKey: Erply's wiki says an expired session may be
// answered with HTTP 403. A 403 to a call that carried a dead key becomes
// 1054 (ErrSessionInvalid, so that the pool refreshes); a 403 to a call
// whose key is alive stays the HTTP 403 it was. Either way the key is
// checked with exactly one getSessionKeyInfo.
func TestForbiddenWithKey(t *testing.T) {
	for _, tc := range []struct {
		name        string
		deleteKey   bool
		fault       erplytest.Fault
		wantInvalid bool
	}{
		{"dead key", true, erplytest.Fault{Request: "getJwtToken", DeadKeyHTTPStatus: http.StatusForbidden}, true},
		{"live key", false, erplytest.Fault{Request: "getJwtToken", HTTPStatus: http.StatusForbidden}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _, c, acct, demo, _ := fakeErply(t)
			s, err := c.VerifyUser(t.Context(), acct, demo.username, demo.password, 3600)
			if err != nil {
				t.Fatal(err)
			}
			if tc.deleteKey {
				srv.DeleteSession(s.SessionKey)
			}
			srv.Inject(tc.fault)
			srv.ResetCounters()

			_, err = c.GetJwtToken(t.Context(), acct, s.SessionKey)
			var e *upstream.Error
			if !errors.As(err, &e) || e.HTTPStatus != http.StatusForbidden {
				t.Fatalf("err = %#v, want an *upstream.Error with HTTP 403", err)
			}
			if got := errors.Is(err, upstream.ErrSessionInvalid); got != tc.wantInvalid {
				t.Errorf("errors.Is(err, ErrSessionInvalid) = %v, want %v (err %v)", got, tc.wantInvalid, err)
			}
			wantCode := 0
			if tc.wantInvalid {
				wantCode = upstream.CodeSessionExpired
			}
			if upstream.CodeOf(err) != wantCode || (upstream.Result(err) == "erply_1054") != tc.wantInvalid {
				t.Errorf("code %d, result %q; want code %d", upstream.CodeOf(err), upstream.Result(err), wantCode)
			}
			if n := srv.Calls("getSessionKeyInfo"); n != 1 {
				t.Errorf("getSessionKeyInfo called %d times, want 1 (the check)", n)
			}
			if n := srv.Calls("getJwtToken"); n != 1 {
				t.Errorf("getJwtToken called %d times, want 1 (a 403 is not retried)", n)
			}
		})
	}
}

// TestForbiddenWithoutKey: a 403 to a call without a session key (a login)
// or to getSessionKeyInfo itself is left as it is, with no check.
func TestForbiddenWithoutKey(t *testing.T) {
	srv, _, c, acct, demo, _ := fakeErply(t)
	s, err := c.VerifyUser(t.Context(), acct, demo.username, demo.password, 3600)
	if err != nil {
		t.Fatal(err)
	}
	srv.DeleteSession(s.SessionKey)
	srv.Inject(erplytest.Fault{HTTPStatus: http.StatusForbidden})
	srv.ResetCounters()

	if _, err := c.VerifyUser(t.Context(), acct, demo.username, demo.password, 3600); upstream.Result(err) != "http_403" {
		t.Errorf("verifyUser: %v, want HTTP 403", err)
	}
	if _, err := c.GetSessionKeyInfo(t.Context(), acct, s.SessionKey); upstream.Result(err) != "http_403" {
		t.Errorf("getSessionKeyInfo: %v, want HTTP 403", err)
	}
	if c.SessionKeyDead(t.Context(), acct, s.SessionKey) {
		t.Error("SessionKeyDead true although getSessionKeyInfo answered 403, not 1054/1055")
	}
	if n := srv.Calls("getSessionKeyInfo"); n != 2 {
		t.Errorf("getSessionKeyInfo called %d times, want 2 (no check of a check)", n)
	}
}
