package answer_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/internal/answer"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOf(t *testing.T) {
	own := answer.New(http.StatusBadRequest, "missing_key", "form field key is required")
	refused := &upstream.Error{Request: "verifyUser", Code: upstream.CodeLoginFailed}
	for _, tc := range []struct {
		name string
		err  error
		want answer.Error
	}{
		{"an answer as it is", own, *own},
		{"a wrapped answer", fmt.Errorf("handler: %w", own), *own},
		{"unknown credential", fmt.Errorf("%w: %q", pool.ErrUnknownCredential, "nosuch"),
			answer.Error{Status: 404, Code: "unknown_credential", Message: `unknown credential: "nosuch"`}},
		{"body over the limit", &http.MaxBytesError{Limit: 65536},
			answer.Error{Status: 413, Code: "body_too_large", Message: "request body larger than 65536 bytes"}},
		{"no session after a refused login", &pool.UnavailableError{Name: "pos", Reason: refused, RetryAfter: 90 * time.Second},
			answer.Error{Status: 503, Code: "no_valid_session", Message: "credential pos: no valid session: " + refused.Error(),
				ErplyCode: upstream.CodeLoginFailed, RetryAfter: 90 * time.Second}},
		{"gave up waiting for a login", &upstream.Error{Request: "verifyUser", Code: upstream.CodeMaintenance, Err: context.DeadlineExceeded},
			answer.Error{Status: 503, Code: "no_valid_session", Message: "no valid session yet: gave up waiting for the login",
				ErplyCode: upstream.CodeMaintenance, RetryAfter: time.Second}},
		{"caller went away", context.Canceled,
			answer.Error{Status: 503, Code: "no_valid_session", Message: "no valid session yet: gave up waiting for the login", RetryAfter: time.Second}},
		{"anything else", errors.New("the pool returned no snapshot"),
			answer.Error{Status: 500, Code: "internal", Message: "the pool returned no snapshot"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := answer.Of(tc.err); *got != tc.want {
				t.Errorf("Of(%v) = %+v, want %+v", tc.err, *got, tc.want)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	unavailable := &pool.UnavailableError{Name: "pos", RetryAfter: 1200 * time.Millisecond,
		Reason: &upstream.Error{Request: "verifyUser", Code: upstream.CodeLoginFailed}}
	for _, tc := range []struct {
		name    string
		err     error
		text    bool
		status  int
		headers map[string]string // "" means absent
		body    string
	}{
		{"JSON without an Erply code", answer.New(404, "no_endpoints", "the endpoint list is empty <&>"), false, 404,
			map[string]string{"Content-Type": "application/json", "Retry-After": "", answer.CodeHeader: "", "Content-Length": ""},
			`{"error":"no_endpoints","message":"the endpoint list is empty <&>"}` + "\n"},
		{"JSON 503 with an Erply code", unavailable, false, 503,
			map[string]string{"Content-Type": "application/json", "Retry-After": "2"},
			`{"error":"no_valid_session","message":"credential pos: no valid session: erply verifyUser: error 1051 (login refused)","erplyCode":1051}` + "\n"},
		{"text 503 with an Erply code", unavailable, true, 503,
			map[string]string{"Content-Type": "text/plain; charset=utf-8", "Retry-After": "2",
				answer.CodeHeader: "no_valid_session", answer.ErplyCodeHeader: "1051"},
			"error: credential pos: no valid session: erply verifyUser: error 1051 (login refused)\n"},
		{"text without an Erply code", answer.New(403, "forbidden", "uid 1000 may not read this credential"), true, 403,
			map[string]string{"Content-Type": "text/plain; charset=utf-8", answer.CodeHeader: "forbidden", answer.ErplyCodeHeader: "", "Retry-After": ""},
			"error: uid 1000 may not read this credential\n"},
		{"503 without a wait still says 1 s", &answer.Error{Status: 503, Code: "proxy_busy", Message: "busy"}, false, 503,
			map[string]string{"Retry-After": "1"},
			`{"error":"proxy_busy","message":"busy"}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			w.Header().Set("Content-Length", "99") // left by a handler that had started an answer
			answer.Write(w, tc.err, tc.text)
			if w.Code != tc.status {
				t.Errorf("status %d, want %d", w.Code, tc.status)
			}
			for k, want := range tc.headers {
				if got := w.Header().Get(k); got != want {
					t.Errorf("header %s = %q, want %q", k, got, want)
				}
			}
			if got := w.Body.String(); got != tc.body {
				t.Errorf("body %q, want %q", got, tc.body)
			}
		})
	}
}
