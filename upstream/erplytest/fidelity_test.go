package erplytest

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// rawCall sends a POST with query as the URL's query string and body (nil:
// no body, no Content-Type, as the official Go SDK sends by default) and
// decodes the envelope of an HTTP 200 answer.
func (e *env) rawCall(query url.Values, body url.Values) (int, reply) {
	e.t.Helper()
	u := e.apiURL(e.cc)
	if query != nil {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(body.Encode())
	}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, u, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := e.c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	var r reply
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &r); err != nil {
			e.t.Fatalf("HTTP 200 with %q: %v", b, err)
		}
	}
	return resp.StatusCode, r
}

// TestQueryStringFormat: the official SDK's default format — every
// parameter in the query of a body-less POST, "setContentType" instead of
// "sendContentType" — logs in and makes calls, and the names (never the
// values) that arrived in the URL are recorded.
func TestQueryStringFormat(t *testing.T) {
	e := newEnv(t)
	code, r := e.rawCall(url.Values{"request": {"verifyUser"}, "setContentType": {"1"}, "clientCode": {e.cc},
		"username": {e.user}, "password": {e.pw}, "sessionLength": {"600"}}, nil)
	if code != 200 || r.Status.ErrorCode != 0 {
		t.Fatalf("verifyUser in the query: HTTP %d, status %+v", code, r.Status)
	}
	var recs []struct {
		SessionKey    string `json:"sessionKey"`
		SessionLength int    `json:"sessionLength"`
	}
	if err := json.Unmarshal(r.Records, &recs); err != nil || len(recs) != 1 || recs[0].SessionLength != 600 {
		t.Fatalf("records %s (%v), want one session of 600 s", r.Records, err)
	}
	code, r = e.rawCall(url.Values{"request": {"getProducts"}, "clientCode": {e.cc}, "sessionKey": {recs[0].SessionKey}}, nil)
	if code != 200 || r.Status.ErrorCode != 0 || r.Status.Request != "getProducts" {
		t.Fatalf("getProducts in the query: HTTP %d, status %+v", code, r.Status)
	}
	want := []string{"clientCode", "password", "request", "sessionKey", "sessionLength", "setContentType", "username"}
	if got := e.s.QueryFieldsSeen(); !reflect.DeepEqual(got, want) {
		t.Errorf("QueryFieldsSeen = %v, want %v", got, want)
	}
	if got := e.s.QueryStringsSeen(); got != 2 {
		t.Errorf("QueryStringsSeen = %d, want 2", got)
	}
	if e.s.Calls("verifyUser") != 1 || e.s.Calls("getProducts") != 1 {
		t.Errorf("calls counted: verifyUser %d, getProducts %d; want 1 each", e.s.Calls("verifyUser"), e.s.Calls("getProducts"))
	}

	// A body value wins over the query's: the body names the request here.
	code, r = e.rawCall(url.Values{"request": {"getProducts"}},
		url.Values{"request": {"getSessionKeyInfo"}, "clientCode": {e.cc}, "sessionKey": {recs[0].SessionKey}})
	if code != 200 || r.Status.Request != "getSessionKeyInfo" || r.Status.ErrorCode != 0 {
		t.Errorf("body and query both name a request: HTTP %d, status %+v; want the body's getSessionKeyInfo", code, r.Status)
	}
}

// TestMissingClientCode: a request without clientCode gets Erply's envelope
// error 1001 (account not found), not an HTML 404 page, and is not counted.
func TestMissingClientCode(t *testing.T) {
	e := newEnv(t)
	for name, tc := range map[string]struct{ query, body url.Values }{
		"body":  {nil, url.Values{"request": {"verifyUser"}, "username": {e.user}, "password": {e.pw}}},
		"query": {url.Values{"request": {"verifyUser"}, "username": {e.user}, "password": {e.pw}}, nil},
	} {
		code, r := e.rawCall(tc.query, tc.body)
		if code != 200 {
			t.Fatalf("%s: HTTP %d, want 200 with an error envelope", name, code)
		}
		e.wantError(r, 1001, "")
		if r.Status.Request != "verifyUser" {
			t.Errorf("%s: status.request = %q", name, r.Status.Request)
		}
	}
	if n := e.s.TotalCalls(); n != 0 {
		t.Errorf("TotalCalls = %d, want 0: requests without a client code are not counted", n)
	}
}

// TestDuplicatedSessionKey: two sessionKey values, in the body or split
// between the body and the query, are an error (1016, field sessionKey),
// never silently resolved to one of them.
func TestDuplicatedSessionKey(t *testing.T) {
	e := newEnv(t)
	key := e.login()
	other := e.login()
	base := func() url.Values {
		return url.Values{"request": {"getSessionKeyInfo"}, "clientCode": {e.cc}}
	}
	twice := base()
	twice["sessionKey"] = []string{key, other}
	_, r := e.rawCall(nil, twice)
	e.wantError(r, 1016, "sessionKey")
	same := base()
	same["sessionKey"] = []string{key, key}
	_, r = e.rawCall(nil, same)
	e.wantError(r, 1016, "sessionKey")
	split := base()
	split.Set("sessionKey", key)
	_, r = e.rawCall(url.Values{"sessionKey": {other}}, split)
	e.wantError(r, 1016, "sessionKey")
	once := base()
	once.Set("sessionKey", key)
	if _, r := e.rawCall(nil, once); r.Status.ErrorCode != 0 {
		t.Errorf("one sessionKey: status %+v, want ok", r.Status)
	}
}

// TestDeadKeyHTTPStatus: the fault answers HTTP 403 only to calls whose key
// is dead, counts only those, and leaves live keys, logins and switchUser
// alone.
func TestDeadKeyHTTPStatus(t *testing.T) {
	e := newEnv(t)
	live := e.login()
	dead := e.login()
	e.s.DeleteSession(dead)
	expired := e.login()
	e.s.ExpireSession(expired)
	e.s.Inject(Fault{DeadKeyHTTPStatus: http.StatusForbidden, Count: 2})

	ok := outcome{httpStatus: 200}
	steps := []struct {
		what string
		got  outcome
		want outcome
	}{
		{"live key", e.outcome(e.cc, "getProducts", "sessionKey", live), ok},
		{"login", e.outcome(e.cc, "verifyUser", "username", e.user, "password", e.pw), ok},
		{"switchUser on an expired parent", e.outcome(e.cc, "switchUser", "sessionKey", expired, "cardCode", e.pin), ok},
		{"deleted key", e.outcome(e.cc, "getProducts", "sessionKey", dead), outcome{httpStatus: 403}},
		{"expired key", e.outcome(e.cc, "getJwtToken", "sessionKey", expired), outcome{httpStatus: 403}},
		{"deleted key, fault used up", e.outcome(e.cc, "getProducts", "sessionKey", dead), outcome{httpStatus: 200, erplyCode: 1054}},
	}
	for _, s := range steps {
		if s.got != s.want {
			t.Errorf("%s: %+v, want %+v", s.what, s.got, s.want)
		}
	}
}

// TestLoginRecordFields: login records carry the fields the official SDK
// reads, berlinPOSAssetsURL and epsiURL among them.
func TestLoginRecordFields(t *testing.T) {
	e := newEnv(t)
	rec := e.record(e.call("verifyUser", "username", e.user, "password", e.pw))
	for _, f := range []string{"userID", "userName", "employeeName", "employeeID", "groupID", "groupName", "ipAddress",
		"sessionKey", "sessionLength", "loginUrl", "berlinPOSVersion", "berlinPOSAssetsURL", "epsiURL", "identityToken", "token"} {
		if v, ok := rec[f]; !ok || v == "" {
			t.Errorf("login record lacks %s", f)
		}
	}
}

// TestHandlerOnOwnListener: Handler serves the same fake on another
// listener (here TLS), sharing its state and counters.
func TestHandlerOnOwnListener(t *testing.T) {
	e := newEnv(t)
	ts := httptest.NewTLSServer(e.s.Handler())
	t.Cleanup(ts.Close)
	c := ts.Client()
	t.Cleanup(c.CloseIdleConnections)
	f := form(e.cc, "verifyUser", "username", e.user, "password", e.pw)
	resp, err := c.PostForm(ts.URL+"/"+e.cc+"/api/", f)
	if err != nil {
		t.Fatal(err)
	}
	var r reply
	err = json.NewDecoder(resp.Body).Decode(&r)
	resp.Body.Close()
	if err != nil || r.Status.ErrorCode != 0 {
		t.Fatalf("verifyUser over TLS: %v, status %+v", err, r.Status)
	}
	var recs []struct {
		SessionKey string `json:"sessionKey"`
	}
	if err := json.Unmarshal(r.Records, &recs); err != nil || len(recs) != 1 || !e.s.SessionValid(recs[0].SessionKey) {
		t.Fatalf("the session made over TLS is not one the fake knows: %s", r.Records)
	}
	if n := e.s.Calls("verifyUser"); n != 1 {
		t.Errorf("Calls(verifyUser) = %d, want 1", n)
	}
}
