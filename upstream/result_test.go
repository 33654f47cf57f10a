package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"

	"github.com/erply-sessiond/erply-sessiond/upstream"
)

func TestResult(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"success", nil, "ok"},
		{"Erply error code", &upstream.Error{Request: "verifyUser", Code: 1051}, "erply_1051"},
		{"wrapped by the pool", fmt.Errorf("parent pos: %w", &upstream.Error{Code: 1054}), "erply_1054"},
		{"code too long for a label", &upstream.Error{Code: 1234567}, "erply_other"},
		{"HTTP status", &upstream.Error{HTTPStatus: 503}, "http_503"},
		{"HTTP 429", &upstream.Error{HTTPStatus: 429}, "http_429"},
		{"not an HTTP status", &upstream.Error{HTTPStatus: 999}, "http_other"},
		{"unreadable reply", &upstream.Error{Err: fmt.Errorf("%w: no session key", upstream.ErrBadReply)}, "bad_reply"},
		{"call canceled", &upstream.Error{Err: context.Canceled}, "canceled"},
		{"deadline passed", &upstream.Error{Err: context.DeadlineExceeded}, "timeout"},
		{"deadline outside a call", fmt.Errorf("parent pos: %w", context.DeadlineExceeded), "timeout"},
		{"Erply's word wins over the deadline", &upstream.Error{Code: 1000, Err: context.DeadlineExceeded}, "erply_1000"},
		{"HTTP status wins over the deadline", &upstream.Error{HTTPStatus: 503, Err: context.DeadlineExceeded}, "http_503"},
		{"connection refused", &upstream.Error{Err: syscall.ECONNREFUSED}, "network"},
		{"unreadable secret file", errors.New("SESSIOND_POS_PASSWORD_FILE: permission denied"), "config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := upstream.Result(tc.err); got != tc.want {
				t.Errorf("Result(%v) = %q, want %q", tc.err, got, tc.want)
			}
		})
	}
}

// TestResultOfCalls names real failures of Call the same way.
func TestResultOfCalls(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		writeJSON(w, okReply("verifyUser", `[{"sessionKey":"k","sessionLength":3600}]`))
	})
	for _, tc := range []struct {
		name string
		ctx  context.Context
		acct upstream.Account
		want string
	}{
		{"no client code", t.Context(), upstream.Account{APIURL: f.srv.URL}, "config"},
		{"unusable API URL", t.Context(), upstream.Account{ClientCode: "1", APIURL: "ftp://x/"}, "config"},
		{"connection refused", t.Context(), upstream.Account{ClientCode: "1", APIURL: closed.URL}, "network"},
		{"canceled before sending", canceled, f.account(), "canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := newClient(t, func(o *upstream.Options) { o.RetryMax = -1 })
			_, err := c.VerifyUser(tc.ctx, tc.acct, "clerk", password, 0)
			if got := upstream.Result(err); got != tc.want {
				t.Errorf("Result(%v) = %q, want %q", err, got, tc.want)
			}
		})
	}
}
