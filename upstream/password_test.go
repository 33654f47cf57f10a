package upstream_test

import (
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/upstream"
)

const newPassword = "new-Secret-pw-91c2"

// TestChangePasswordForm checks the documented parameters of changePassword
// (erply-docs 004): sessionKey, oldPassword, newPassword, sessionLength, all
// in the body.
func TestChangePasswordForm(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		writeJSON(w, okReply("changePassword", `[{"sessionKey":"k2","sessionLength":600,"userID":"6","userName":"demo","isPasswordExpired":false}]`))
	})
	c, logs := newClient(t, nil)
	s, err := c.ChangePassword(t.Context(), f.account(), sessionKey, password, newPassword, 600)
	if err != nil {
		t.Fatal(err)
	}
	if s.Request != "changePassword" || s.SessionKey != "k2" || s.SessionLength != 600 || s.UserID != 6 || s.PasswordExpired {
		t.Errorf("session = %+v", s)
	}
	reqs := f.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	want := map[string]string{"request": "changePassword", "clientCode": "104729", "sendContentType": "1",
		"sessionKey": sessionKey, "oldPassword": password, "newPassword": newPassword, "sessionLength": "600"}
	r := reqs[0]
	for k, v := range want {
		if got := r.form.Get(k); got != v {
			t.Errorf("form %s = %q, want %q", k, got, v)
		}
	}
	if len(r.form) != len(want) || r.rawQuery != "" {
		t.Errorf("form %v, query %q: want exactly %v in the body", r.form, r.rawQuery, want)
	}
	assertNoSecrets(t, "log", logs.String())
	if strings.Contains(logs.String(), newPassword) {
		t.Errorf("the log shows the new password: %s", logs.String())
	}
}

// TestChangePasswordRetries: changePassword is sent again only when the
// failed attempt certainly did nothing at Erply; a lost or 5xx answer is
// returned at once, since a second call would meet a deleted key.
func TestChangePasswordRetries(t *testing.T) {
	ok := okReply("changePassword", `[{"sessionKey":"k2","sessionLength":3600}]`)
	tests := []struct {
		name      string
		handler   func(w http.ResponseWriter, r *http.Request, n int64)
		wantCalls int64
		wantCode  int  // Erply code of the error; 0 with wantErr: no code
		wantErr   bool // an error is expected
	}{
		{"maintenance is retried", func(w http.ResponseWriter, r *http.Request, n int64) {
			if n == 1 {
				writeJSON(w, errReply("changePassword", 1000, ""))
				return
			}
			writeJSON(w, ok)
		}, 2, 0, false},
		{"429 is retried", func(w http.ResponseWriter, r *http.Request, n int64) {
			if n == 1 {
				w.Header().Set("Retry-After", "0")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			writeJSON(w, ok)
		}, 2, 0, false},
		{"5xx is not retried", func(w http.ResponseWriter, r *http.Request, n int64) {
			w.WriteHeader(http.StatusBadGateway)
		}, 1, 0, true},
		{"a reset connection is not retried", func(w http.ResponseWriter, r *http.Request, n int64) {
			resetConn(t, w)
		}, 1, 0, true},
		{"a refusal is returned with its code", func(w http.ResponseWriter, r *http.Request, n int64) {
			writeJSON(w, errReply("changePassword", 1016, "oldPassword"))
		}, 1, 1016, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, tc.handler)
			c, _ := newClient(t, func(o *upstream.Options) { o.RetryMax = 3; o.RateLimitWait = time.Millisecond })
			_, err := c.ChangePassword(t.Context(), f.account(), sessionKey, password, newPassword, 0)
			if n := f.calls.Load(); n != tc.wantCalls {
				t.Errorf("server called %d times, want %d", n, tc.wantCalls)
			}
			if (err != nil) != tc.wantErr || upstream.CodeOf(err) != tc.wantCode {
				t.Fatalf("err = %v (code %d), want error %v with code %d", err, upstream.CodeOf(err), tc.wantErr, tc.wantCode)
			}
			if err != nil {
				assertNoSecrets(t, "error", err.Error())
				if strings.Contains(err.Error(), newPassword) {
					t.Errorf("error shows the new password: %v", err)
				}
			}
		})
	}
	t.Run("a refused connection is retried", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		c, logs := newClient(t, nil)
		_, err = c.ChangePassword(t.Context(), upstream.Account{ClientCode: "1", APIURL: "http://" + addr + "/api/"}, sessionKey, password, newPassword, 0)
		if !errors.Is(err, upstream.ErrUnavailable) || !strings.Contains(logs.String(), `"attempts":4`) {
			t.Errorf("err = %v; a connection refused before sending must be retried (log %s)", err, logs.String())
		}
	})
}

// TestPasswordExpiredDecoded reads isPasswordExpired in each shape Erply's
// loose typing allows; anything else is false and fails nothing.
func TestPasswordExpiredDecoded(t *testing.T) {
	tests := []struct {
		value string
		want  bool
	}{
		{`true`, true}, {`1`, true}, {`"1"`, true}, {`"true"`, true}, {`"TRUE"`, true}, {`" 1 "`, true},
		{`false`, false}, {`0`, false}, {`"0"`, false}, {`"false"`, false}, {`""`, false}, {`null`, false},
		{`"yes"`, false}, {`2`, false}, {`{}`, false}, {`[]`, false},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
				writeJSON(w, okReply("verifyUser", `[{"sessionKey":"k","sessionLength":3600,"isPasswordExpired":`+tc.value+`}]`))
			})
			c, _ := newClient(t, nil)
			s, err := c.VerifyUser(t.Context(), f.account(), "u", password, 0)
			if err != nil {
				t.Fatal(err)
			}
			if s.PasswordExpired != tc.want {
				t.Errorf("PasswordExpired = %v, want %v", s.PasswordExpired, tc.want)
			}
		})
	}
	t.Run("absent", func(t *testing.T) {
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
			writeJSON(w, okReply("verifyUser", `[{"sessionKey":"k","sessionLength":3600}]`))
		})
		c, _ := newClient(t, nil)
		s, err := c.VerifyUser(t.Context(), f.account(), "u", password, 0)
		if err != nil || s.PasswordExpired {
			t.Fatalf("%+v, %v: want PasswordExpired false", s, err)
		}
	})
}
