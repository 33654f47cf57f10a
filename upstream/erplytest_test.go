package upstream_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// fakeErply starts the package's fake Erply with the demo account on a fake
// clock that stands at 10:15 UTC, and a client with shrunk waits.
func fakeErply(t *testing.T) (*erplytest.Server, *clock.Fake, *upstream.Client, upstream.Account, demoUsers, *logBuf) {
	t.Helper()
	clk := clock.NewFake(time.Date(2024, 5, 1, 10, 15, 0, 0, time.UTC))
	srv := erplytest.New(clk)
	t.Cleanup(srv.Close)
	var d demoUsers
	d.clientCode, d.username, d.password, d.pin = srv.SeedDemo()
	c, logs := newClient(t, func(o *upstream.Options) { o.Clock = clk })
	return srv, clk, c, upstream.Account{ClientCode: d.clientCode, APIURL: srv.APIURL()}, d, logs
}

type demoUsers struct{ clientCode, username, password, pin string }

// TestFakeErplyEveryCall runs every call of the client against the fake and
// checks what it decoded against what the fake holds.
func TestFakeErplyEveryCall(t *testing.T) {
	srv, clk, c, acct, demo, logs := fakeErply(t)
	ctx := t.Context()

	s, err := c.VerifyUser(ctx, acct, demo.username, demo.password, 1800)
	if err != nil {
		t.Fatalf("verifyUser: %v", err)
	}
	if !srv.SessionValid(s.SessionKey) || s.SessionLength != 1800 || s.UserID != 6 || s.EmployeeID != 5 ||
		s.GroupID != 1 || s.GroupName != "Administrators" || s.UserName != demo.username || !s.ServerTime.Equal(clk.Now()) {
		t.Errorf("verifyUser session = %+v", s)
	}
	if s.Token == "" || s.IdentityToken == "" {
		t.Errorf("verifyUser without JWTs: %+v", s)
	}
	checkEndpoints(t, s.Endpoints, erplytest.DefaultEndpoints())
	if f := srv.LastForm("verifyUser"); f.Get("password") != demo.password || f.Get("sendContentType") != "1" || f.Get("clientCode") != demo.clientCode {
		t.Errorf("verifyUser form lacks fields: has %v", keys(f))
	}

	info, err := c.GetSessionKeyInfo(ctx, acct, s.SessionKey)
	if err != nil || info.Remaining() != 30*time.Minute || !info.CreationTime.Equal(clk.Now()) {
		t.Errorf("getSessionKeyInfo = %+v, %v; want 30m remaining", info, err)
	}

	u, err := c.GetSessionKeyUser(ctx, acct, s.SessionKey)
	if err != nil || u.SessionKey != s.SessionKey || u.UserID != 6 || u.EmployeeName != "Maria Manager" {
		t.Errorf("getSessionKeyUser = %+v, %v", u, err)
	}

	clk.Advance(10 * time.Minute)
	j, err := c.GetJwtToken(ctx, acct, s.SessionKey)
	if err != nil || j.Token == "" || !j.Expires.Equal(clk.Now().Add(time.Hour)) || !j.ServerTime.Equal(clk.Now()) {
		t.Errorf("getJwtToken = %+v, %v; want exp an hour from now", j, err)
	}
	it, err := c.GetIdentityToken(ctx, acct, s.SessionKey)
	if err != nil || it.Token == "" || !it.Expires.Equal(clk.Now().Add(time.Hour)) {
		t.Errorf("getIdentityToken = %+v, %v", it, err)
	}

	sw, err := c.SwitchUser(ctx, acct, s.SessionKey, demo.pin, 600)
	if err != nil || sw.SessionKey == s.SessionKey || sw.UserID != 7 || sw.SessionLength != 600 || !srv.SessionValid(sw.SessionKey) {
		t.Errorf("switchUser = %+v, %v", sw, err)
	}
	if f := srv.LastForm("switchUser"); f.Get("cardCode") != demo.pin || f.Get("sessionKey") != s.SessionKey {
		t.Errorf("switchUser form has %v", keys(f))
	}

	vi, err := c.VerifyIdentityToken(ctx, acct, srv.IssueIdentityToken(demo.clientCode, demo.username, 20*time.Minute))
	if err != nil || !srv.SessionValid(vi.SessionKey) {
		t.Fatalf("verifyIdentityToken = %+v, %v", vi, err)
	}
	// Its reply has only the key; the lifetime comes from getSessionKeyInfo.
	if info, err := c.GetSessionKeyInfo(ctx, acct, vi.SessionKey); err != nil || info.Remaining() != 20*time.Minute {
		t.Errorf("identity session info = %+v, %v; want the token's 20m", info, err)
	}

	vo, err := c.VerifyOAuthToken(ctx, acct, srv.IssueOAuthToken(demo.clientCode, demo.username, time.Hour), 900)
	if err != nil || !srv.SessionValid(vo.SessionKey) || vo.UserID != 6 {
		t.Errorf("verifyOAuthToken = %+v, %v", vo, err)
	}

	for _, req := range []string{"verifyUser", "getSessionKeyInfo", "getSessionKeyUser", "getJwtToken", "getIdentityToken", "switchUser", "verifyIdentityToken", "verifyOAuthToken"} {
		want := 1
		if req == "getSessionKeyInfo" {
			want = 2
		}
		if n := srv.Calls(req); n != want {
			t.Errorf("%s called %d times, want %d", req, n, want)
		}
	}
	if n := srv.QueryStringsSeen(); n != 0 {
		t.Errorf("%d requests carried a query string", n)
	}
	// The session keys and tokens of this test are secrets too.
	for _, sec := range []string{demo.password, demo.pin, s.SessionKey, s.Token, sw.SessionKey, vi.SessionKey, j.Token} {
		if strings.Contains(logs.String(), sec) {
			t.Errorf("log contains a secret")
		}
	}
}

// checkEndpoints compares decoded lists with the records the fake was given:
// same names, same order, and Raw holding the same JSON.
func checkEndpoints(t *testing.T, got map[string][]upstream.Endpoint, want map[string][]map[string]any) {
	t.Helper()
	if !reflect.DeepEqual(sortedKeys(got), sortedKeys(want)) {
		t.Errorf("endpoint lists %v, want %v", sortedKeys(got), sortedKeys(want))
		return
	}
	for name, recs := range want {
		if len(got[name]) != len(recs) {
			t.Errorf("%s: %d endpoints, want %d", name, len(got[name]), len(recs))
			continue
		}
		for i, rec := range recs {
			ep := got[name][i]
			var raw, sent any
			wantJSON, _ := json.Marshal(rec)
			_ = json.Unmarshal(wantJSON, &sent)
			if err := json.Unmarshal(ep.Raw, &raw); err != nil || !reflect.DeepEqual(raw, sent) {
				t.Errorf("%s[%d].Raw = %s, want %s", name, i, ep.Raw, wantJSON)
			}
			if ep.Address() == "" {
				t.Errorf("%s[%d] has no address: %+v", name, i, ep)
			}
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := keys(m)
	sort.Strings(ks)
	return ks
}

func TestFakeErplyErrors(t *testing.T) {
	t.Run("wrong password is one call", func(t *testing.T) {
		srv, _, c, acct, demo, logs := fakeErply(t)
		_, err := c.VerifyUser(t.Context(), acct, demo.username, "wrong-"+password, 0)
		if upstream.CodeOf(err) != upstream.CodeLoginFailed || !errors.Is(err, upstream.ErrLoginRefused) {
			t.Errorf("err = %v, want 1051", err)
		}
		if n := srv.Calls("verifyUser"); n != 1 {
			t.Errorf("verifyUser called %d times, want 1", n)
		}
		assertNoSecrets(t, "log", logs.String())
	})
	t.Run("blocked user", func(t *testing.T) {
		srv, _, c, acct, demo, _ := fakeErply(t)
		for range 5 {
			_, _ = c.VerifyUser(t.Context(), acct, demo.username, "wrong", 0)
		}
		_, err := c.VerifyUser(t.Context(), acct, demo.username, demo.password, 0)
		if upstream.CodeOf(err) != upstream.CodeUserBlocked || !errors.Is(err, upstream.ErrLoginRefused) || !srv.Blocked(demo.clientCode, demo.username) {
			t.Errorf("err = %v, want 1052", err)
		}
		if n := srv.Calls("verifyUser"); n != 6 {
			t.Errorf("verifyUser called %d times, want 6", n)
		}
	})
	t.Run("expired and unknown session keys", func(t *testing.T) {
		srv, _, c, acct, demo, _ := fakeErply(t)
		s, err := c.VerifyUser(t.Context(), acct, demo.username, demo.password, 0)
		if err != nil {
			t.Fatal(err)
		}
		srv.ExpireSession(s.SessionKey)
		_, err = c.GetJwtToken(t.Context(), acct, s.SessionKey)
		if upstream.CodeOf(err) != upstream.CodeSessionExpired || !errors.Is(err, upstream.ErrSessionInvalid) {
			t.Errorf("expired: err = %v, want 1054", err)
		}
		_, err = c.GetSessionKeyInfo(t.Context(), acct, "never-issued")
		if upstream.CodeOf(err) != upstream.CodeSessionInvalid || !errors.Is(err, upstream.ErrSessionInvalid) {
			t.Errorf("unknown: err = %v, want 1055", err)
		}
		if n := srv.Calls("getJwtToken") + srv.Calls("getSessionKeyInfo"); n != 2 {
			t.Errorf("%d calls, want 2 (no retries)", n)
		}
	})
	t.Run("switchUser on a key expired over 2h ago", func(t *testing.T) {
		_, clk, c, acct, demo, _ := fakeErply(t)
		s, err := c.VerifyUser(t.Context(), acct, demo.username, demo.password, 60)
		if err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Hour)
		if _, err := c.SwitchUser(t.Context(), acct, s.SessionKey, demo.pin, 0); err != nil {
			t.Errorf("switchUser within 2h of expiry: %v", err)
		}
		clk.Advance(2 * time.Hour)
		_, err = c.SwitchUser(t.Context(), acct, s.SessionKey, demo.pin, 0)
		if !errors.Is(err, upstream.ErrSessionTooOld) {
			t.Errorf("err = %v, want ErrSessionTooOld", err)
		}
	})
	t.Run("JWT errors", func(t *testing.T) {
		srv, _, c, acct, demo, _ := fakeErply(t)
		_, err := c.VerifyIdentityToken(t.Context(), acct, "not-a-jwt")
		if !errors.Is(err, upstream.ErrJWT) {
			t.Errorf("bad token: err = %v, want ErrJWT", err)
		}
		_, err = c.VerifyOAuthToken(t.Context(), acct, srv.IssueOAuthToken(demo.clientCode, "nobody@example.com", time.Hour), 600)
		if !errors.Is(err, upstream.ErrJWT) {
			t.Errorf("unknown user: err = %v, want ErrJWT", err)
		}
	})
}

func TestFakeErplyFaults(t *testing.T) {
	tests := []struct {
		name      string
		fault     erplytest.Fault
		wantCalls int
		wantErr   error // nil: the login succeeds
		check     func(*testing.T, *upstream.Error, *clock.Fake)
	}{
		{name: "503 twice then ok", fault: erplytest.Fault{Request: "verifyUser", HTTPStatus: 503, Count: 2}, wantCalls: 3},
		{name: "503 throughout", fault: erplytest.Fault{Request: "verifyUser", HTTPStatus: 503}, wantCalls: 4, wantErr: upstream.ErrUnavailable},
		{name: "maintenance once", fault: erplytest.Fault{Request: "verifyUser", ErplyCode: 1000, Count: 1}, wantCalls: 2},
		{name: "dropped connection once", fault: erplytest.Fault{Request: "verifyUser", Drop: true, Count: 1}, wantCalls: 2},
		{name: "429 once", fault: erplytest.Fault{Request: "verifyUser", HTTPStatus: 429, Count: 1}, wantCalls: 2},
		{name: "404 not retried", fault: erplytest.Fault{Request: "verifyUser", HTTPStatus: 404}, wantCalls: 1,
			check: func(t *testing.T, e *upstream.Error, _ *clock.Fake) {
				if e.HTTPStatus != 404 || errors.Is(e, upstream.ErrUnavailable) {
					t.Errorf("err = %#v", e)
				}
			}},
		{name: "quota", fault: erplytest.Fault{Request: "verifyUser", ErplyCode: 1002}, wantCalls: 1, wantErr: upstream.ErrQuota,
			check: func(t *testing.T, e *upstream.Error, clk *clock.Fake) {
				// The fake's clock stands at 10:15: the window turns at 11:00.
				if e.RetryAfter != 45*time.Minute {
					t.Errorf("RetryAfter = %v, want 45m", e.RetryAfter)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, clk, c, acct, demo, _ := fakeErply(t)
			srv.Inject(tc.fault)
			s, err := c.VerifyUser(t.Context(), acct, demo.username, demo.password, 0)
			if n := srv.Calls("verifyUser"); n != tc.wantCalls {
				t.Errorf("verifyUser called %d times, want %d", n, tc.wantCalls)
			}
			if tc.wantErr == nil && tc.check == nil {
				if err != nil || !srv.SessionValid(s.SessionKey) {
					t.Errorf("got %+v, %v; want a live session", s, err)
				}
				return
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			var e *upstream.Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %#v, want *upstream.Error", err)
			}
			if tc.check != nil {
				tc.check(t, e, clk)
			}
		})
	}
}

func TestFakeErplyLatencyAndBadReplies(t *testing.T) {
	t.Run("latency beyond the deadline", func(t *testing.T) {
		srv, _, c, acct, demo, _ := fakeErply(t)
		srv.Inject(erplytest.Fault{Request: "getJwtToken", Latency: time.Minute})
		s, err := c.VerifyUser(t.Context(), acct, demo.username, demo.password, 0)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = c.GetJwtToken(ctx, acct, s.SessionKey)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
			t.Errorf("err = %v after %v, want DeadlineExceeded within the deadline", err, time.Since(start))
		}
	})
	replies := map[string]func(url.Values) (int, []byte){
		"oversized": func(url.Values) (int, []byte) {
			return http.StatusOK, okReply("verifyUser", `[{"sessionKey":"k","pad":"`+strings.Repeat("x", 5<<20)+`"}]`)
		},
		"truncated": func(url.Values) (int, []byte) {
			b := okReply("verifyUser", `[{"sessionKey":"k"}]`)
			return http.StatusOK, b[:len(b)-3]
		},
		"echoes the form": func(f url.Values) (int, []byte) {
			return http.StatusOK, []byte("<html>" + f.Encode() + "</html>")
		},
	}
	for name, h := range replies {
		t.Run(name, func(t *testing.T) {
			srv, _, c, acct, demo, logs := fakeErply(t)
			srv.SetHandler("verifyUser", h)
			_, err := c.VerifyUser(t.Context(), acct, demo.username, demo.password, 0)
			if !errors.Is(err, upstream.ErrBadReply) {
				t.Errorf("err = %v, want ErrBadReply", err)
			}
			if n := srv.Calls("verifyUser"); n != 1 {
				t.Errorf("verifyUser called %d times, want 1", n)
			}
			if err != nil && (strings.Contains(err.Error(), demo.password) || bytes.Contains([]byte(logs.String()), []byte(demo.password))) {
				t.Error("the password leaked into the error or the log")
			}
		})
	}
}

// TestFakeErplyConcurrentCalls shares one client between goroutines (run
// with -race): every caller gets its own session.
func TestFakeErplyConcurrentCalls(t *testing.T) {
	srv, _, c, acct, demo, _ := fakeErply(t)
	const n = 16
	keys := make(chan string, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			s, err := c.VerifyUser(t.Context(), acct, demo.username, demo.password, 0)
			if err != nil {
				errs <- err
				return
			}
			if _, err := c.GetJwtToken(t.Context(), acct, s.SessionKey); err != nil {
				errs <- err
				return
			}
			keys <- s.SessionKey
		}()
	}
	seenKeys := map[string]bool{}
	for range n {
		select {
		case err := <-errs:
			t.Error(err)
		case k := <-keys:
			seenKeys[k] = true
		}
	}
	if len(seenKeys) != n || srv.Calls("verifyUser") != n || srv.Calls("getJwtToken") != n {
		t.Errorf("%d distinct keys, %d verifyUser, %d getJwtToken; want %d each", len(seenKeys), srv.Calls("verifyUser"), srv.Calls("getJwtToken"), n)
	}
}
