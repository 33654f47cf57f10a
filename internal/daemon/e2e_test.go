package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// End-to-end tests of the local API through the real daemon (serve) on a
// real Unix socket, against the fake Erply.

// keyRE is what a session key of the fake looks like on a text route.
var keyRE = regexp.MustCompile(`^[0-9a-f]{40}\n$`)

// jsonBody decodes an answer that must be JSON.
func jsonBody(t *testing.T, body string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("answer is not JSON (%v): %q", err, body)
	}
}

// errorJSON is the API's error shape.
type errorJSON struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	ErplyCode int    `json:"erplyCode"`
}

// sessionFields are every field DESIGN.md lists for GET /v1/sessions/{name}.
var sessionFields = []string{"name", "clientCode", "apiURL", "sessionKey", "expiresAt", "expiresIn",
	"userID", "userName", "employeeID", "employeeName", "groupID", "groupName", "token", "identityToken", "passwordExpired"}

// checkSession asserts the session JSON has exactly the documented fields
// and returns it.
func checkSession(t *testing.T, body string) map[string]any {
	t.Helper()
	var m map[string]any
	jsonBody(t, body, &m)
	var got []string
	for k := range m {
		got = append(got, k)
	}
	want := slices.Clone(sessionFields)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("session fields = %v, want %v", got, want)
	}
	return m
}

func TestE2ESessionRoutes(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	posKey := d.key("pos")
	if !d.fake.SessionValid(posKey) {
		t.Fatal("pos key is not a live session at the fake")
	}
	apiURL := d.fake.URL() + "/" + d.code + "/api/"

	t.Run("list", func(t *testing.T) {
		code, body := d.get("/v1/sessions")
		if code != http.StatusOK {
			t.Fatalf("GET /v1/sessions = %d %s", code, body)
		}
		var list []map[string]any
		jsonBody(t, body, &list)
		for _, it := range list {
			// The refresh point is jittered: check it lies in its window, then compare the rest.
			at, err := time.Parse(time.RFC3339, fmt.Sprint(it["refreshAt"]))
			if off := at.Sub(time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)); err != nil || off < 37*time.Minute || off > 44*time.Minute {
				t.Fatalf("%v: refreshAt %v is not about two thirds into the hour", it["name"], it["refreshAt"])
			}
			delete(it, "refreshAt")
		}
		want := []map[string]any{
			{"name": "pos", "kind": "password", "clientCode": d.code, "state": "ok", "expiresAt": "2026-11-23T09:00:00Z", "logins": 1.0, "lastError": "", "passwordExpired": false, "fleet": "off"},
			{"name": "cashier", "kind": "pin", "clientCode": d.code, "state": "ok", "expiresAt": "2026-11-23T09:00:00Z", "logins": 1.0, "lastError": "", "passwordExpired": false, "fleet": "off"},
		}
		if fmt.Sprint(list) != fmt.Sprint(want) {
			t.Fatalf("list =\n%v\nwant\n%v", list, want)
		}
		for _, secret := range []string{posKey, d.pw, d.pin} {
			if strings.Contains(body, secret) {
				t.Fatal("the list shows a secret")
			}
		}
	})

	t.Run("session JSON", func(t *testing.T) {
		code, hdr, body := d.do(http.MethodGet, "/v1/sessions/pos", nil)
		if code != http.StatusOK || hdr.Get("Content-Type") != "application/json" {
			t.Fatalf("GET /v1/sessions/pos = %d %q %s", code, hdr.Get("Content-Type"), body)
		}
		pos := checkSession(t, body)
		want := map[string]any{
			"name": "pos", "clientCode": d.code, "apiURL": apiURL, "sessionKey": posKey,
			"expiresAt": "2026-11-23T09:00:00Z", "expiresIn": 3600.0,
			"userID": 6.0, "userName": d.user, "employeeID": 5.0, "employeeName": "Maria Manager",
			"groupID": 1.0, "groupName": "Administrators",
		}
		for k, v := range want {
			if pos[k] != v {
				t.Errorf("pos %s = %v, want %v", k, pos[k], v)
			}
		}
		for _, k := range []string{"token", "identityToken"} {
			if s, _ := pos[k].(string); strings.Count(s, ".") != 2 {
				t.Errorf("pos %s = %q, want a JWT", k, s)
			}
		}

		_, cbody := d.get("/v1/sessions/cashier")
		cashier := checkSession(t, cbody)
		wantC := map[string]any{
			"name": "cashier", "clientCode": d.code, "apiURL": apiURL,
			"userID": 7.0, "userName": "cashier@demo.example", "employeeID": 8.0, "employeeName": "Carl Cashier",
			"groupID": 3.0, "groupName": "Cashiers", "expiresIn": 3600.0,
		}
		for k, v := range wantC {
			if cashier[k] != v {
				t.Errorf("cashier %s = %v, want %v", k, cashier[k], v)
			}
		}
		if ck, _ := cashier["sessionKey"].(string); ck == posKey || !d.fake.SessionValid(ck) {
			t.Errorf("cashier's key %q is pos's or not live at the fake", ck)
		}

		// expiresIn counts down with the clock; the rest stays.
		d.clk.Advance(10 * time.Second)
		_, body = d.get("/v1/sessions/pos")
		pos = checkSession(t, body)
		if pos["expiresIn"] != 3590.0 || pos["sessionKey"] != posKey {
			t.Fatalf("10 s later: expiresIn %v key changed %v", pos["expiresIn"], pos["sessionKey"] != posKey)
		}
	})

	t.Run("text routes", func(t *testing.T) {
		_, body := d.get("/v1/sessions/pos")
		var s map[string]any
		jsonBody(t, body, &s)
		for _, tc := range []struct{ route, want string }{
			{"key", posKey},
			{"jwt", s["token"].(string)},
			{"identity-token", s["identityToken"].(string)},
		} {
			code, hdr, got := d.do(http.MethodGet, "/v1/sessions/pos/"+tc.route, nil)
			if code != http.StatusOK || got != tc.want+"\n" || hdr.Get("Content-Type") != "text/plain; charset=utf-8" {
				t.Errorf("GET %s = %d %q %q, want 200 text/plain value+newline", tc.route, code, hdr.Get("Content-Type"), got)
			}
		}
	})

	t.Run("invalidate", func(t *testing.T) {
		logins := d.fake.Calls("verifyUser")
		k1 := d.key("pos")

		// The current key, as a form: one new login, the new session answered.
		code, _, body := d.post("/v1/sessions/pos/invalidate", "key="+k1)
		if code != http.StatusOK {
			t.Fatalf("invalidate (form) = %d %s", code, body)
		}
		k2 := checkSession(t, body)["sessionKey"].(string)
		if k2 == k1 || !d.fake.SessionValid(k2) {
			t.Fatalf("invalidate answered key changed=%v valid=%v", k2 != k1, d.fake.SessionValid(k2))
		}
		if n := d.fake.Calls("verifyUser"); n != logins+1 {
			t.Fatalf("verifyUser calls = %d, want %d (one new login)", n, logins+1)
		}
		if got := d.key("pos"); got != k2 {
			t.Fatal("the key route does not serve the new key")
		}

		// The old key again, as a query: no login, the current session.
		code, _, body = d.do(http.MethodPost, "/v1/sessions/pos/invalidate?key="+url.QueryEscape(k1), nil)
		if code != http.StatusOK {
			t.Fatalf("invalidate (query, old key) = %d %s", code, body)
		}
		if got := checkSession(t, body)["sessionKey"]; got != k2 {
			t.Fatal("invalidating an old key did not answer the current one")
		}
		if n := d.fake.Calls("verifyUser"); n != logins+1 {
			t.Fatalf("an old key caused a login: verifyUser calls = %d, want %d", n, logins+1)
		}

		// The current key as a query: a new login.
		code, _, body = d.do(http.MethodPost, "/v1/sessions/pos/invalidate?key="+url.QueryEscape(k2), nil)
		if code != http.StatusOK {
			t.Fatalf("invalidate (query) = %d %s", code, body)
		}
		if k3 := checkSession(t, body)["sessionKey"]; k3 == k2 || k3 == k1 {
			t.Fatal("invalidate (query) did not log in anew")
		}
		if n := d.fake.Calls("verifyUser"); n != logins+2 {
			t.Fatalf("verifyUser calls = %d, want %d", n, logins+2)
		}
	})

	t.Run("endpoints", func(t *testing.T) {
		endpoints := func(list string) []map[string]any {
			t.Helper()
			code, hdr, body := d.do(http.MethodGet, "/v1/sessions/pos/endpoints/"+list, nil)
			if code != http.StatusOK || hdr.Get("Content-Type") != "application/json" {
				t.Fatalf("GET endpoints/%s = %d %s", list, code, body)
			}
			var eps []map[string]any
			jsonBody(t, body, &eps)
			return eps
		}
		pick := func(list string) string {
			t.Helper()
			code, body := d.get("/v1/sessions/pos/endpoints/" + list + "/pick")
			if code != http.StatusOK || !strings.HasSuffix(body, "\n") {
				t.Fatalf("pick %s = %d %q", list, code, body)
			}
			return strings.TrimSuffix(body, "\n")
		}

		eps := endpoints("customerRegistryURLs")
		if len(eps) != 3 {
			t.Fatalf("customerRegistryURLs has %d records, want 3: %v", len(eps), eps)
		}
		last := -1.0
		for _, e := range eps {
			if e["down"] != false || e["token"] == nil {
				t.Fatalf("record %v: want down:false and the fields Erply sent", e)
			}
			if p := e["priority"].(float64); p < last {
				t.Fatalf("priorities not ascending: %v", eps)
			} else {
				last = p
			}
		}
		if eps[2]["url"] != "https://cr-c.example/" {
			t.Fatalf("the priority-20 endpoint is not last: %v", eps)
		}
		// Fields stay as Erply sent them: this list's numbers are strings.
		if tr := endpoints("transactionRegistryURLs"); tr[0]["priority"] != "0" {
			t.Fatalf("transactionRegistryURLs priority = %#v, want the string Erply sent", tr[0]["priority"])
		}
		if p := pick("customerRegistryURLs"); p != "https://cr-a.example/" && p != "https://cr-b.example/" {
			t.Fatalf("pick = %q, want a priority-10 endpoint", p)
		}

		// Down (form url=): ordered last with down:true, pick moves on.
		code, _, body := d.post("/v1/sessions/pos/endpoints/customerRegistryURLs/down", "url=https://cr-a.example/")
		if code != http.StatusOK {
			t.Fatalf("down = %d %s", code, body)
		}
		var after []map[string]any
		jsonBody(t, body, &after)
		if after[2]["url"] != "https://cr-a.example/" || after[2]["down"] != true || after[0]["down"] != false {
			t.Fatalf("after down, order = %v", after)
		}
		if p := pick("customerRegistryURLs"); p != "https://cr-b.example/" {
			t.Fatalf("pick after cr-a down = %q, want cr-b", p)
		}
		// Down as a query with url=: the next priority is picked.
		code, _, body = d.do(http.MethodPost, "/v1/sessions/pos/endpoints/customerRegistryURLs/down?url="+url.QueryEscape("https://cr-b.example/"), nil)
		if code != http.StatusOK {
			t.Fatalf("down (query) = %d %s", code, body)
		}
		if p := pick("customerRegistryURLs"); p != "https://cr-c.example/" {
			t.Fatalf("pick with both priority-10 endpoints down = %q, want cr-c", p)
		}
		// target= on a {target, port} list.
		if code, _, body := d.post("/v1/sessions/pos/endpoints/cayanGatewayURLs/down", "target=cayan1.example"); code != http.StatusOK {
			t.Fatalf("down target = %d %s", code, body)
		}
		if p := pick("cayanGatewayURLs"); p != "cayan2.example:8443" {
			t.Fatalf("pick after cayan1 down = %q, want cayan2.example:8443", p)
		}
		// The cool-down ends on the clock: nothing is down any more.
		d.clk.Advance(31 * time.Second)
		for _, e := range endpoints("customerRegistryURLs") {
			if e["down"] != false {
				t.Fatalf("still down after the cool-down: %v", e)
			}
		}
		if p := pick("customerRegistryURLs"); p == "https://cr-c.example/" {
			t.Fatal("pick still skips the priority-10 endpoints after the cool-down")
		}
		// An empty list is an empty array.
		if code, body := d.get("/v1/sessions/pos/endpoints/couponRegistryURLs"); code != http.StatusOK || body != "[]\n" {
			t.Fatalf("empty list = %d %q", code, body)
		}
	})

	t.Run("health readiness metrics", func(t *testing.T) {
		if code, body := d.get("/healthz"); code != http.StatusOK || body != "ok\n" {
			t.Fatalf("healthz = %d %q", code, body)
		}
		code, body := d.get("/readyz")
		var rz struct {
			Ready       bool                         `json:"ready"`
			Credentials map[string]map[string]string `json:"credentials"`
		}
		jsonBody(t, body, &rz)
		// cashier may still be re-switching after pos's invalidation above:
		// "refreshing" holds a valid session too.
		valid := map[string]bool{"ok": true, "refreshing": true}
		if code != http.StatusOK || !rz.Ready || !valid[rz.Credentials["pos"]["state"]] || !valid[rz.Credentials["cashier"]["state"]] {
			t.Fatalf("readyz = %d %s", code, body)
		}
		code, hdr, body := d.do(http.MethodGet, "/metrics", nil)
		if code != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") ||
			!strings.Contains(body, "erply_sessiond_session_expiry_timestamp_seconds") {
			t.Fatalf("metrics = %d %q", code, hdr.Get("Content-Type"))
		}
	})

	t.Run("api smoke", func(t *testing.T) {
		code, _, body := d.post("/v1/sessions/pos/api", "request=getProducts&recordsOnPage=2")
		var reply struct {
			Status struct {
				ResponseStatus string `json:"responseStatus"`
			} `json:"status"`
		}
		jsonBody(t, body, &reply)
		if code != http.StatusOK || reply.Status.ResponseStatus != "ok" {
			t.Fatalf("api = %d %s", code, body)
		}
		if f := d.fake.LastForm("getProducts"); f.Get("sessionKey") != d.key("pos") || f.Get("clientCode") != d.code {
			t.Fatalf("the proxy sent sessionKey/clientCode %v", f)
		}
	})
}

func TestE2EErrorStatuses(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	key := d.key("pos")
	big := "key=" + key + "&pad=" + strings.Repeat("x", 100<<10)

	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string // JSON error code; "" for a text route
		text                     string // text route body
	}{
		{name: "invalidate without key", method: "POST", path: "/v1/sessions/pos/invalidate", body: "", status: 400, code: "missing_key"},
		{name: "down without url", method: "POST", path: "/v1/sessions/pos/endpoints/customerRegistryURLs/down", body: "nothing=1", status: 400, code: "missing_target"},
		{name: "unknown credential JSON", method: "GET", path: "/v1/sessions/nosuch", status: 404, code: "unknown_credential"},
		{name: "unknown credential text", method: "GET", path: "/v1/sessions/nosuch/key", status: 404, text: "error: unknown credential\n"},
		{name: "invalid credential name", method: "GET", path: "/v1/sessions/POS/jwt", status: 404, text: "error: unknown credential\n"},
		{name: "unknown credential invalidate", method: "POST", path: "/v1/sessions/nosuch/invalidate", body: "key=" + key, status: 404, code: "unknown_credential"},
		{name: "unknown list", method: "GET", path: "/v1/sessions/pos/endpoints/nosuchURLs", status: 404, code: "unknown_list"},
		{name: "unknown list pick", method: "GET", path: "/v1/sessions/pos/endpoints/nosuchURLs/pick", status: 404, text: "error: the session has no such endpoint list\n"},
		{name: "no endpoints", method: "GET", path: "/v1/sessions/pos/endpoints/couponRegistryURLs/pick", status: 404, text: "error: the endpoint list is empty\n"},
		{name: "unknown endpoint", method: "POST", path: "/v1/sessions/pos/endpoints/customerRegistryURLs/down", body: "url=https://elsewhere.example/", status: 404, code: "unknown_endpoint"},
		{name: "no route", method: "GET", path: "/v2/anything", status: 404, code: "not_found"},
		{name: "wrong method", method: "GET", path: "/v1/sessions/pos/invalidate", status: 405, code: "method_not_allowed"},
		{name: "body too large", method: "POST", path: "/v1/sessions/pos/invalidate", body: big, status: 413, code: "body_too_large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.method == http.MethodPost {
				body = strings.NewReader(tc.body)
			}
			status, hdr, got := d.do(tc.method, tc.path, body)
			if status != tc.status {
				t.Fatalf("%s %s = %d %q, want %d", tc.method, tc.path, status, got, tc.status)
			}
			if tc.code == "" {
				if got != tc.text || hdr.Get("Content-Type") != "text/plain; charset=utf-8" {
					t.Fatalf("text error = %q (%s), want %q", got, hdr.Get("Content-Type"), tc.text)
				}
			} else {
				var e errorJSON
				jsonBody(t, got, &e)
				if e.Error != tc.code || e.Message == "" || e.ErplyCode != 0 || hdr.Get("Content-Type") != "application/json" {
					t.Fatalf("error = %+v (%s), want code %q with a message", e, hdr.Get("Content-Type"), tc.code)
				}
			}
			if strings.Contains(got, key) {
				t.Fatal("an error answer carries the session key")
			}
		})
	}
	if code, hdr, _ := d.do(http.MethodGet, "/v1/sessions/pos/invalidate", nil); code != 405 || hdr.Get("Allow") != "POST" {
		t.Fatalf("405 Allow = %q", hdr.Get("Allow"))
	}
	// None of it cost a login or moved the key.
	if d.key("pos") != key || d.fake.Calls("verifyUser") != 1 {
		t.Fatalf("errors changed the session: verifyUser calls %d", d.fake.Calls("verifyUser"))
	}
}

// TestE2EUnavailableRetryAfter: Erply down past the session's expiry gives
// 503 with Retry-After on every session route, and readiness says why.
func TestE2EUnavailableRetryAfter(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	key := d.key("pos")
	d.fake.Inject(erplytest.Fault{Request: "verifyUser", HTTPStatus: http.StatusServiceUnavailable})
	d.fake.Inject(erplytest.Fault{Request: "switchUser", HTTPStatus: http.StatusServiceUnavailable})
	d.clk.Advance(time.Hour + time.Minute)
	if d.fake.SessionValid(key) {
		t.Fatal("the fake still accepts the first key after its hour")
	}

	for _, tc := range []struct {
		path string
		text bool
	}{{"/v1/sessions/pos/key", true}, {"/v1/sessions/pos", false}, {"/v1/sessions/cashier/jwt", true}, {"/v1/sessions/pos/endpoints/customerRegistryURLs/pick", true}} {
		code, hdr, body := d.do(http.MethodGet, tc.path, nil)
		if code != http.StatusServiceUnavailable {
			t.Fatalf("GET %s = %d %q, want 503", tc.path, code, body)
		}
		ra, err := strconv.Atoi(hdr.Get("Retry-After"))
		if err != nil || ra < 1 {
			t.Fatalf("GET %s: Retry-After = %q, want whole seconds ≥ 1", tc.path, hdr.Get("Retry-After"))
		}
		if strings.Contains(body, key) {
			t.Fatal("a 503 carries the expired key")
		}
		if tc.text {
			if !strings.HasPrefix(body, "error: credential ") || !strings.Contains(body, "no valid session") {
				t.Fatalf("GET %s text error = %q", tc.path, body)
			}
			continue
		}
		var e errorJSON
		jsonBody(t, body, &e)
		if e.Error != "no_valid_session" || !strings.Contains(e.Message, "503") {
			t.Fatalf("GET %s error = %+v, want no_valid_session naming the upstream 503", tc.path, e)
		}
	}
	code, body := d.get("/readyz")
	var rz struct {
		Ready       bool                         `json:"ready"`
		Credentials map[string]map[string]string `json:"credentials"`
	}
	jsonBody(t, body, &rz)
	if code != http.StatusServiceUnavailable || rz.Ready || rz.Credentials["pos"]["state"] != "expired" || rz.Credentials["pos"]["error"] == "" {
		t.Fatalf("readyz = %d %s", code, body)
	}
	_, body = d.get("/v1/sessions")
	var list []map[string]any
	jsonBody(t, body, &list)
	if list[0]["state"] != "expired" || list[0]["lastError"] == "" {
		t.Fatalf("list = %s", body)
	}
	if _, scrape := d.get("/metrics"); !regexp.MustCompile(`(?m)^erply_sessiond_refresh_failures_total\{credential="pos"\} [1-9]`).MatchString(scrape) {
		t.Fatal("metrics do not count pos's refresh failures")
	}

	// Erply back: the next attempt (at the latest after Retry-After) serves again.
	d.fake.ClearFaults()
	d.clk.Advance(6 * time.Minute)
	if k := d.key("pos"); k == key || !d.fake.SessionValid(k) {
		t.Fatal("no fresh key after Erply came back")
	}
}

// TestE2EReadyzNamesFailingCredential: a credential whose login is refused
// makes /readyz 503, listed with its state and error, and no secret shows.
func TestE2EReadyzNamesFailingCredential(t *testing.T) {
	const wrong = "wrong-clerk-password-7c1e"
	const right = "right-clerk-password-55aa"
	d := startDaemon(t, daemonOptions{
		env: map[string]string{
			"SESSIOND_CREDENTIALS":       "pos,cashier,clerk",
			"SESSIOND_CLERK_USERNAME":    "clerk@demo.example",
			"SESSIOND_CLERK_PASSWORD":    wrong,
			"SESSIOND_CLERK_CLIENT_CODE": "104729",
		},
		setup: func(d *testDaemon) {
			d.fake.AddAccount(d.code).AddUser(erplytest.User{Username: "clerk@demo.example", Password: right, UserID: 9})
		},
	})
	code, body := d.get("/readyz")
	var rz struct {
		Ready       bool                         `json:"ready"`
		Credentials map[string]map[string]string `json:"credentials"`
	}
	jsonBody(t, body, &rz)
	if code != http.StatusServiceUnavailable || rz.Ready {
		t.Fatalf("readyz = %d %s, want 503 not ready", code, body)
	}
	clerk := rz.Credentials["clerk"]
	if clerk["state"] != "expired" || !strings.Contains(clerk["error"], "1051") {
		t.Fatalf("clerk = %v, want state expired and the Erply code 1051 in the error", clerk)
	}
	if rz.Credentials["pos"]["state"] != "ok" || rz.Credentials["cashier"]["state"] != "ok" {
		t.Fatalf("the good credentials are not ok: %s", body)
	}
	for _, secret := range []string{wrong, right, d.pw, d.pin, d.key("pos")} {
		if strings.Contains(body, secret) {
			t.Fatalf("readyz shows a secret: %s", body)
		}
	}
	// Its routes answer 503 with the Erply code; the others serve.
	code, hdr, body := d.do(http.MethodGet, "/v1/sessions/clerk", nil)
	var e errorJSON
	jsonBody(t, body, &e)
	if code != http.StatusServiceUnavailable || e.ErplyCode != 1051 || hdr.Get("Retry-After") == "" {
		t.Fatalf("clerk session = %d %s", code, body)
	}
	if strings.Contains(d.logs.String(), wrong) {
		t.Fatal("the log shows the wrong password")
	}
}

// TestE2EPeerCredentialRefusal reads a credential restricted by ALLOW_UIDS
// from two other real uids (curl under setpriv): the listed one reads it,
// the other gets 403 and does not see it in the list.
func TestE2EPeerCredentialRefusal(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run curl as other uids (setpriv); the injected peer-credential tests in localapi cover non-root runs")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not installed (Debian util-linux)")
	}
	curl := curlPath(t)
	d := startDaemon(t, daemonOptions{env: map[string]string{
		"SESSIOND_SOCKET_MODE":    "0666",
		"SESSIOND_POS_ALLOW_UIDS": "4243",
	}})
	if err := os.Chmod(d.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	as := func(uid int, path string) (int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		id := strconv.Itoa(uid)
		out, err := exec.CommandContext(ctx, setpriv, "--reuid="+id, "--regid="+id, "--clear-groups",
			curl, "-sS", "-w", "\n%{http_code}", "--unix-socket", d.socket, "http://localhost"+path).Output()
		if err != nil {
			t.Fatalf("curl as uid %d: %v", uid, err)
		}
		s := string(out)
		i := strings.LastIndexByte(s, '\n')
		code, _ := strconv.Atoi(s[i+1:])
		return code, s[:i]
	}

	code, body := as(4242, "/v1/sessions/pos/key")
	if code != http.StatusForbidden || body != "error: uid 4242 may not read this credential\n" {
		t.Fatalf("uid 4242 reading pos = %d %q, want 403", code, body)
	}
	code, body = as(4242, "/v1/sessions/pos")
	var e errorJSON
	jsonBody(t, body, &e)
	if code != http.StatusForbidden || e.Error != "forbidden" {
		t.Fatalf("uid 4242 reading pos JSON = %d %s", code, body)
	}
	if code, body = as(4243, "/v1/sessions/pos/key"); code != http.StatusOK || body != d.key("pos")+"\n" {
		t.Fatalf("uid 4243 (allowed) reading pos = %d %q", code, body)
	}
	// cashier has no restriction: anyone who can open the socket.
	if code, body = as(4242, "/v1/sessions/cashier/key"); code != http.StatusOK || !keyRE.MatchString(body) {
		t.Fatalf("uid 4242 reading cashier = %d %q", code, body)
	}
	code, body = as(4242, "/v1/sessions")
	var list []map[string]any
	jsonBody(t, body, &list)
	if code != http.StatusOK || len(list) != 1 || list[0]["name"] != "cashier" {
		t.Fatalf("uid 4242's list = %s, want only cashier", body)
	}
	// Refused invalidation logs nobody in.
	logins := d.fake.Calls("verifyUser")
	if code, _ = as(4242, "/v1/sessions/pos/invalidate?key="+d.key("pos")); code != http.StatusMethodNotAllowed {
		t.Fatalf("GET invalidate = %d", code)
	}
	if d.fake.Calls("verifyUser") != logins {
		t.Fatal("a refused caller caused a login")
	}
}

func curlPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	return p
}

// TestE2ECurl reads the text routes with the real curl binary, as a shell
// script would.
func TestE2ECurl(t *testing.T) {
	curl := curlPath(t)
	d := startDaemon(t, daemonOptions{})
	run := func(args ...string) (string, string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, curl, append([]string{"-fsS", "--unix-socket", d.socket}, args...)...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return stdout.String(), stderr.String(), 0
		case errors.As(err, &ee):
			return stdout.String(), stderr.String(), ee.ExitCode()
		}
		t.Fatalf("curl: %v", err)
		return "", "", -1
	}

	key := d.key("pos")
	out, stderr, code := run("http://localhost/v1/sessions/pos/key")
	if code != 0 || out != key+"\n" {
		t.Fatalf("curl key = exit %d %q (stderr %q), want exit 0 and the key", code, out, stderr)
	}
	sess, err := d.client.Session(context.Background(), "cashier")
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/v1/sessions/cashier/jwt":            sess.Token,
		"/v1/sessions/cashier/identity-token": sess.IdentityToken,
		"/v1/sessions/cashier/key":            sess.SessionKey,
	} {
		if out, _, code := run("http://localhost" + path); code != 0 || out != want+"\n" {
			t.Fatalf("curl %s = exit %d %q", path, code, out)
		}
	}
	if out, _, code := run("http://localhost/v1/sessions/pos/endpoints/cayanGatewayURLs/pick"); code != 0 ||
		(out != "cayan1.example:443\n" && out != "cayan2.example:8443\n") {
		t.Fatalf("curl pick = exit %d %q", code, out)
	}
	// The invalidation as the README shows it: -d key=… answers the new session.
	out, _, code = run("http://localhost/v1/sessions/pos/invalidate", "-d", "key="+key)
	var s map[string]any
	jsonBody(t, out, &s)
	if code != 0 || s["sessionKey"] == key || s["sessionKey"] != d.key("pos") {
		t.Fatalf("curl invalidate = exit %d %s", code, out)
	}

	// -f turns an error into exit 22 with nothing on stdout.
	out, stderr, code = run("http://localhost/v1/sessions/nosuch/key")
	if code != 22 || out != "" || !strings.Contains(stderr, "404") {
		t.Fatalf("curl unknown credential = exit %d stdout %q stderr %q, want 22", code, out, stderr)
	}
	if _, _, code = run("http://localhost/v1/sessions/pos/endpoints/couponRegistryURLs/pick"); code != 22 {
		t.Fatalf("curl empty pick = exit %d, want 22", code)
	}
}

// tcpDo sends one request to the daemon's TCP listener.
func tcpDo(t *testing.T, addr, method, path string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 20 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s on TCP: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestE2ETCPListener(t *testing.T) {
	t.Run("health only", func(t *testing.T) {
		d := startDaemon(t, daemonOptions{env: map[string]string{"SESSIOND_HTTP_ADDR": "127.0.0.1:0"}})
		addr := d.dm.HTTPAddr()
		if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
			t.Fatalf("bound TCP address = %q", addr)
		}
		if !strings.Contains(d.logs.String(), `"httpAddr":"`+addr+`"`) {
			t.Fatal("the serving log line does not name the bound TCP address")
		}
		if code, body := tcpDo(t, addr, "GET", "/healthz"); code != 200 || body != "ok\n" {
			t.Fatalf("TCP healthz = %d %q", code, body)
		}
		if code, body := tcpDo(t, addr, "GET", "/readyz"); code != 200 || !strings.Contains(body, `"ready":true`) {
			t.Fatalf("TCP readyz = %d %q", code, body)
		}
		if code, body := tcpDo(t, addr, "GET", "/metrics"); code != 200 || !strings.Contains(body, "erply_sessiond_logins_total") {
			t.Fatalf("TCP metrics = %d", code)
		}
		key := d.key("pos")
		for _, p := range []string{"/v1/sessions/pos/key", "/v1/sessions/pos", "/v1/sessions"} {
			// Not even with the header: the routes are off on TCP.
			code, body := tcpDo(t, addr, "GET", p, "X-Sessiond-Request", "1")
			if code != 404 || strings.Contains(body, key) {
				t.Fatalf("TCP %s = %d %q, want 404", p, code, body)
			}
		}
		if code, _ := tcpDo(t, addr, "POST", "/v1/sessions/pos/invalidate?key="+key, "X-Sessiond-Request", "1"); code != 404 {
			t.Fatalf("TCP invalidate = %d, want 404", code)
		}
		if d.fake.Calls("verifyUser") != 1 {
			t.Fatal("a TCP request caused a login")
		}
	})
	t.Run("sessions with header", func(t *testing.T) {
		d := startDaemon(t, daemonOptions{env: map[string]string{"SESSIOND_HTTP_ADDR": "127.0.0.1:0", "SESSIOND_HTTP_SESSIONS": "true"}})
		addr := d.dm.HTTPAddr()
		key := d.key("pos")
		if code, body := tcpDo(t, addr, "GET", "/v1/sessions/pos/key"); code != 412 || !strings.Contains(body, "X-Sessiond-Request") || strings.Contains(body, key) {
			t.Fatalf("TCP key without header = %d %q, want 412", code, body)
		}
		if code, _ := tcpDo(t, addr, "GET", "/v1/sessions/pos/key", "X-Sessiond-Request", "true"); code != 412 {
			t.Fatalf("TCP key with header value true = %d, want 412", code)
		}
		code, body := tcpDo(t, addr, "GET", "/v1/sessions/pos")
		var e errorJSON
		jsonBody(t, body, &e)
		if code != 412 || e.Error != "missing_header" {
			t.Fatalf("TCP session without header = %d %s", code, body)
		}
		if code, body := tcpDo(t, addr, "GET", "/v1/sessions/pos/key", "X-Sessiond-Request", "1"); code != 200 || body != key+"\n" {
			t.Fatalf("TCP key with header = %d %q", code, body)
		}
		code, body = tcpDo(t, addr, "GET", "/v1/sessions/cashier", "X-Sessiond-Request", "1")
		if code != 200 {
			t.Fatalf("TCP session with header = %d %s", code, body)
		}
		checkSession(t, body)
		if code, _ := tcpDo(t, addr, "POST", "/v1/sessions/pos/invalidate?key="+key); code != 412 {
			t.Fatalf("TCP invalidate without header = %d, want 412", code)
		}
		if d.fake.Calls("verifyUser") != 1 {
			t.Fatal("a refused TCP invalidation logged in")
		}
		if code, _ := tcpDo(t, addr, "GET", "/healthz"); code != 200 {
			t.Fatalf("TCP healthz needs no header: %d", code)
		}
	})
}

// TestE2EMetrics scrapes /metrics from the running daemon and checks the
// values against the session and the fake, that labels carry route
// patterns and no secret, and lints the scrape with promtool.
func TestE2EMetrics(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	posKey := d.key("pos")
	// Requests whose raw paths carry a key: they must not become labels.
	d.get("/v1/sessions/" + posKey + "/key")
	d.get("/v1/sessions/pos/endpoints/" + posKey)
	d.get("/nowhere/" + posKey)
	d.post("/v1/sessions/pos/invalidate", "key=not-the-key")
	sess, err := d.client.Session(context.Background(), "pos")
	if err != nil {
		t.Fatal(err)
	}
	cashier, err := d.client.Session(context.Background(), "cashier")
	if err != nil {
		t.Fatal(err)
	}

	// testutil on the daemon's own registry: expiry and logins.
	want := fmt.Sprintf(`# HELP erply_sessiond_session_expiry_timestamp_seconds When each credential's current session expires, in Unix seconds (absent while it has none).
# TYPE erply_sessiond_session_expiry_timestamp_seconds gauge
erply_sessiond_session_expiry_timestamp_seconds{credential="cashier"} %d
erply_sessiond_session_expiry_timestamp_seconds{credential="pos"} %d
`, cashier.ExpiresAt.Unix(), sess.ExpiresAt.Unix())
	if err := testutil.GatherAndCompare(d.reg, strings.NewReader(want), "erply_sessiond_session_expiry_timestamp_seconds"); err != nil {
		t.Fatal(err)
	}

	code, scrape := d.get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("metrics = %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(scrape))
	if err != nil {
		t.Fatalf("the scrape does not parse: %v", err)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		mf := families[name]
		if mf == nil {
			return 0, false
		}
	metrics:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue metrics
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), true
			case m.Counter != nil:
				return m.GetCounter().GetValue(), true
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
		return 0, false
	}

	if v, ok := value("erply_sessiond_session_expiry_timestamp_seconds", map[string]string{"credential": "pos"}); !ok || v != float64(sess.ExpiresAt.Unix()) {
		t.Fatalf("pos expiry metric = %v (present %v), want %d", v, ok, sess.ExpiresAt.Unix())
	}
	if v, ok := value("erply_sessiond_logins_total", map[string]string{"credential": "pos", "result": "ok"}); !ok || v != float64(d.fake.Calls("verifyUser")) {
		t.Fatalf("pos ok logins = %v, fake saw %d verifyUser", v, d.fake.Calls("verifyUser"))
	}
	if v, ok := value("erply_sessiond_logins_total", map[string]string{"credential": "cashier", "result": "ok"}); !ok || v != float64(d.fake.Calls("switchUser")) {
		t.Fatalf("cashier ok logins = %v, fake saw %d switchUser", v, d.fake.Calls("switchUser"))
	}
	if v, ok := value("erply_sessiond_upstream_request_duration_seconds", map[string]string{"request": "verifyUser"}); !ok || v < 1 {
		t.Fatalf("upstream duration for verifyUser: %v samples (present %v)", v, ok)
	}
	if v, ok := value("erply_sessiond_local_requests_total", map[string]string{"route": "GET /v1/sessions/{name}/key", "code": "404"}); !ok || v != 1 {
		t.Fatalf("local requests for the key route with 404 = %v (present %v), want 1", v, ok)
	}
	if v, ok := value("erply_sessiond_local_requests_total", map[string]string{"route": "unmatched", "code": "404"}); !ok || v != 1 {
		t.Fatalf("unmatched 404s = %v (present %v), want 1", v, ok)
	}
	for _, n := range []string{"go_goroutines", "process_open_fds"} {
		if families[n] == nil {
			t.Errorf("collector metric %s missing", n)
		}
	}

	// Every route label is a registered pattern; no label value is a secret.
	patterns := map[string]bool{"unmatched": true}
	for _, p := range []string{"GET /v1/sessions", "GET /v1/sessions/{name}", "GET /v1/sessions/{name}/key",
		"GET /v1/sessions/{name}/jwt", "GET /v1/sessions/{name}/identity-token", "POST /v1/sessions/{name}/invalidate",
		"GET /v1/sessions/{name}/endpoints/{list}", "GET /v1/sessions/{name}/endpoints/{list}/pick",
		"POST /v1/sessions/{name}/endpoints/{list}/down", "POST /v1/sessions/{name}/api",
		"GET /healthz", "GET /readyz", "GET /metrics"} {
		patterns[p] = true
	}
	secrets := []string{posKey, sess.Token, sess.IdentityToken, cashier.SessionKey, cashier.Token, cashier.IdentityToken, d.pw, d.pin}
	for name, mf := range families {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if name == "erply_sessiond_local_requests_total" && lp.GetName() == "route" && !patterns[lp.GetValue()] {
					t.Errorf("route label %q is not a route pattern", lp.GetValue())
				}
				for _, s := range secrets {
					if strings.Contains(lp.GetValue(), s) {
						t.Errorf("metric %s label %s carries a secret", name, lp.GetName())
					}
				}
			}
		}
	}
	for _, s := range secrets {
		if strings.Contains(scrape, s) {
			t.Fatal("the scrape contains a secret")
		}
	}
	checkPromtool(t, scrape)
}

// checkPromtool lints a scrape with `promtool check metrics`.
func checkPromtool(t *testing.T, scrape string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not installed (Debian package prometheus): lint skipped")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(scrape)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
