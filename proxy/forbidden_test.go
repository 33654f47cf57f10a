package proxy_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// TestProxyForbiddenDeadKey: Erply answers HTTP 403 (as its wiki says an
// expired session may) to a call with a deleted key. The proxy checks the
// key with getSessionKeyInfo, finds it dead, and handles it as 1054: one
// login, one re-send with the new key, and the caller gets the successful
// answer.
func TestProxyForbiddenDeadKey(t *testing.T) {
	e := newEnv(t, envConfig{})
	stale := e.key("pos")
	e.fake.DeleteSession(stale)
	e.fake.Inject(erplytest.Fault{Request: "getProducts", DeadKeyHTTPStatus: http.StatusForbidden})
	logins := e.fake.Calls("verifyUser")

	a := e.post("pos", getProducts+"&pageNo=2")
	if a.status != http.StatusOK || envelope(t, a).ResponseStatus != "ok" {
		t.Fatalf("caller got %s, want the re-sent call's ok answer", a)
	}
	if n := e.fake.Calls("verifyUser") - logins; n != 1 {
		t.Errorf("%d logins, want 1", n)
	}
	if n := e.fake.Calls("getProducts"); n != 2 {
		t.Errorf("Erply saw %d getProducts, want 2 (the 403 and one re-send)", n)
	}
	if n := e.fake.Calls("getSessionKeyInfo"); n != 1 {
		t.Errorf("getSessionKeyInfo called %d times, want 1 (the check of the 403)", n)
	}
	fresh := e.key("pos")
	if f := e.fake.LastForm("getProducts"); fresh == stale || f.Get("sessionKey") != fresh || f.Get("pageNo") != "2" {
		t.Errorf("re-sent with the new key: %v, pageNo %q", f.Get("sessionKey") == fresh && fresh != stale, f.Get("pageNo"))
	}
	if n := e.requests("pos", "getProducts", "session_retry_ok"); n != 1 {
		t.Errorf("requests_total{outcome=session_retry_ok} = %v, want 1", n)
	}
}

// TestProxyForbiddenLiveKey: a 403 for a key that is still alive is
// Erply's answer about something else: the caller gets it as sent, with no
// login and no re-send.
func TestProxyForbiddenLiveKey(t *testing.T) {
	e := newEnv(t, envConfig{})
	key := e.key("pos")
	e.fake.Inject(erplytest.Fault{Request: "getProducts", HTTPStatus: http.StatusForbidden})
	logins := e.fake.Calls("verifyUser")

	a := e.post("pos", getProducts)
	if a.status != http.StatusForbidden || !strings.Contains(string(a.body), "403 Forbidden") {
		t.Fatalf("caller got %s, want Erply's 403 as sent", a)
	}
	if n := e.fake.Calls("verifyUser") - logins; n != 0 {
		t.Errorf("%d logins for a live key, want 0", n)
	}
	if n := e.fake.Calls("getProducts"); n != 1 {
		t.Errorf("Erply saw %d getProducts, want 1 (no re-send)", n)
	}
	if n := e.fake.Calls("getSessionKeyInfo"); n != 1 {
		t.Errorf("getSessionKeyInfo called %d times, want 1", n)
	}
	if e.key("pos") != key {
		t.Error("the session changed after a 403 for a live key")
	}
}

// TestProxyForbiddenTwice: a dead key's 403, then a 403 again after the
// one re-send, is relayed as sent: never a second login or re-send.
func TestProxyForbiddenTwice(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.fake.DeleteSession(e.key("pos"))
	e.fake.Inject(erplytest.Fault{Request: "getProducts", DeadKeyHTTPStatus: http.StatusForbidden, Count: 1})
	e.fake.Inject(erplytest.Fault{Request: "getProducts", HTTPStatus: http.StatusForbidden})
	logins := e.fake.Calls("verifyUser")

	a := e.post("pos", getProducts)
	if a.status != http.StatusForbidden {
		t.Fatalf("caller got %s, want the second 403 as sent", a)
	}
	if n := e.fake.Calls("verifyUser") - logins; n != 1 {
		t.Errorf("%d logins, want 1", n)
	}
	if n := e.fake.Calls("getProducts"); n != 2 {
		t.Errorf("Erply saw %d getProducts, want 2", n)
	}
}
