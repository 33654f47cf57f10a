package upstream_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Secrets used in requests. No error string or log line may contain them.
const (
	password   = "pw-Secret-7f3a"
	pin        = "pin-4711-secret"
	sessionKey = "sk-Secret-session-key"
	idToken    = "idtok-Secret-abc"
	identJWT   = "jwt-Secret-identity"
)

var secrets = []string{password, pin, sessionKey, idToken, identJWT}

// seen is one request as the fake server received it.
type seen struct {
	method      string
	contentType string
	userAgent   string
	path        string
	rawQuery    string
	form        url.Values
	at          time.Time
}

// fake is an httptest server whose handler the test writes; it records and
// counts every request.
type fake struct {
	srv   *httptest.Server
	calls atomic.Int64
	mu    sync.Mutex
	reqs  []seen
}

func newFake(t *testing.T, h func(w http.ResponseWriter, r *http.Request, n int64)) *fake {
	t.Helper()
	f := &fake{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(body))
		r.Body = io.NopCloser(bytes.NewReader(body))
		f.mu.Lock()
		f.reqs = append(f.reqs, seen{
			method: r.Method, contentType: r.Header.Get("Content-Type"), userAgent: r.Header.Get("User-Agent"),
			path: r.URL.Path, rawQuery: r.URL.RawQuery, form: form, at: time.Now(),
		})
		f.mu.Unlock()
		h(w, r, f.calls.Add(1))
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fake) account() upstream.Account {
	return upstream.Account{ClientCode: "104729", APIURL: f.srv.URL + "/api/{clientCode}/"}
}

func (f *fake) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.reqs...)
}

// logBuf collects log output for the secret check.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newClient returns a client with waits shrunk to milliseconds, logging to
// the test and to the returned buffer.
func newClient(t *testing.T, mod func(*upstream.Options)) (*upstream.Client, *logBuf) {
	t.Helper()
	logs := &logBuf{}
	opts := upstream.Options{
		Logger:        zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), logs)).Level(zerolog.DebugLevel),
		RetryWaitMin:  time.Millisecond,
		RetryWaitMax:  5 * time.Millisecond,
		RateLimitWait: 5 * time.Millisecond,
	}
	if mod != nil {
		mod(&opts)
	}
	c := upstream.New(opts)
	t.Cleanup(c.CloseIdleConnections)
	return c, logs
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

func okReply(request string, records string) []byte {
	return fmt.Appendf(nil, `{"status":{"request":%q,"requestUnixTime":1700000000,"responseStatus":"ok","errorCode":0,"errorField":"","generationTime":0.01,"recordsTotal":1,"recordsInResponse":1},"records":%s}`, request, records)
}

func errReply(request string, code int, field string) []byte {
	return fmt.Appendf(nil, `{"status":{"request":%q,"requestUnixTime":1700000000,"responseStatus":"error","errorCode":%d,"errorField":%q,"generationTime":0.01,"recordsTotal":0,"recordsInResponse":0},"records":null}`, request, code, field)
}

// makeJWT returns an unsigned JWT whose payload is claims.
func makeJWT(claims string) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString([]byte(claims)) + ".c2ln"
}

func assertNoSecrets(t *testing.T, what, s string) {
	t.Helper()
	for _, sec := range secrets {
		if strings.Contains(s, sec) {
			t.Errorf("%s contains a secret: %q", what, s)
		}
	}
}

// TestCallsSendTheirForm runs every call against a server that checks the
// wire format and answers with the call's reply shape.
func TestCallsSendTheirForm(t *testing.T) {
	jwt := makeJWT(`{"exp":1700086400}`)
	idt := makeJWT(`{"exp":"1700003600"}`)
	tests := []struct {
		name    string
		request string
		want    map[string]string // form fields besides request, clientCode, sendContentType
		secret  []string          // form fields that carry secrets
		records string
		call    func(context.Context, *upstream.Client, upstream.Account) (any, error)
		check   func(*testing.T, any)
	}{{
		name: "verifyUser", request: "verifyUser",
		want:    map[string]string{"username": "demo@example.com", "password": password, "sessionLength": "7200"},
		secret:  []string{"password"},
		records: `[{"sessionKey":"k1","sessionLength":7200,"userID":"6","userName":"demo@example.com"}]`,
		call: func(ctx context.Context, c *upstream.Client, a upstream.Account) (any, error) {
			return c.VerifyUser(ctx, a, "demo@example.com", password, 7200)
		},
		check: func(t *testing.T, v any) {
			s := v.(*upstream.Session)
			if s.Request != "verifyUser" || s.SessionKey != "k1" || s.SessionLength != 7200 || s.UserID != 6 || s.UserName != "demo@example.com" {
				t.Errorf("session = %+v", s)
			}
		},
	}, {
		name: "switchUser", request: "switchUser",
		want:    map[string]string{"sessionKey": sessionKey, "cardCode": pin, "sessionLength": "600"},
		secret:  []string{"sessionKey", "cardCode"},
		records: `[{"sessionKey":"k2","sessionLength":"600","userID":7}]`,
		call: func(ctx context.Context, c *upstream.Client, a upstream.Account) (any, error) {
			return c.SwitchUser(ctx, a, sessionKey, pin, 600)
		},
		check: func(t *testing.T, v any) {
			if s := v.(*upstream.Session); s.SessionKey != "k2" || s.SessionLength != 600 || s.UserID != 7 {
				t.Errorf("session = %+v", s)
			}
		},
	}, {
		name: "verifyIdentityToken", request: "verifyIdentityToken",
		want:    map[string]string{"jwt": identJWT},
		secret:  []string{"jwt"},
		records: `{"sessionKey":"k3"}`,
		call: func(ctx context.Context, c *upstream.Client, a upstream.Account) (any, error) {
			return c.VerifyIdentityToken(ctx, a, identJWT)
		},
		check: func(t *testing.T, v any) {
			if s := v.(*upstream.Session); s.SessionKey != "k3" || s.SessionLength != 0 {
				t.Errorf("session = %+v", s)
			}
		},
	}, {
		name: "verifyOAuthToken", request: "verifyOAuthToken",
		want:    map[string]string{"idToken": idToken, "expiresIn": "900"},
		secret:  []string{"idToken"},
		records: `[{"sessionKey":"k4","sessionLength":900,"groupID":"2","groupName":"Staff"}]`,
		call: func(ctx context.Context, c *upstream.Client, a upstream.Account) (any, error) {
			return c.VerifyOAuthToken(ctx, a, idToken, 900)
		},
		check: func(t *testing.T, v any) {
			if s := v.(*upstream.Session); s.SessionKey != "k4" || s.GroupID != 2 || s.GroupName != "Staff" {
				t.Errorf("session = %+v", s)
			}
		},
	}, {
		name: "getSessionKeyInfo", request: "getSessionKeyInfo",
		want:    map[string]string{"sessionKey": sessionKey},
		secret:  []string{"sessionKey"},
		records: `[{"creationUnixTime":"1699999000","expireUnixTime":"1700003600"}]`,
		call: func(ctx context.Context, c *upstream.Client, a upstream.Account) (any, error) {
			return c.GetSessionKeyInfo(ctx, a, sessionKey)
		},
		check: func(t *testing.T, v any) {
			i := v.(*upstream.SessionKeyInfo)
			if !i.CreationTime.Equal(time.Unix(1699999000, 0)) || !i.ExpireTime.Equal(time.Unix(1700003600, 0)) || i.Remaining() != time.Hour {
				t.Errorf("info = %+v, remaining %v", i, i.Remaining())
			}
		},
	}, {
		name: "getSessionKeyUser", request: "getSessionKeyUser",
		want:    map[string]string{"sessionKey": sessionKey},
		secret:  []string{"sessionKey"},
		records: `[{"userID":"6","userName":"demo","employeeID":"","sessionLength":3600,"token":"` + jwt + `"}]`,
		call: func(ctx context.Context, c *upstream.Client, a upstream.Account) (any, error) {
			return c.GetSessionKeyUser(ctx, a, sessionKey)
		},
		check: func(t *testing.T, v any) {
			// The reply carries no sessionKey: the one asked about is kept.
			if s := v.(*upstream.Session); s.SessionKey != sessionKey || s.UserID != 6 || s.EmployeeID != 0 || s.Token != jwt {
				t.Errorf("session = %+v", s)
			}
		},
	}, {
		name: "getJwtToken", request: "getJwtToken",
		want:    map[string]string{"sessionKey": sessionKey},
		secret:  []string{"sessionKey"},
		records: `{"token":"` + jwt + `"}`,
		call: func(ctx context.Context, c *upstream.Client, a upstream.Account) (any, error) {
			return c.GetJwtToken(ctx, a, sessionKey)
		},
		check: func(t *testing.T, v any) {
			if j := v.(*upstream.JWT); j.Token != jwt || !j.Expires.Equal(time.Unix(1700086400, 0)) || !j.ServerTime.Equal(time.Unix(1700000000, 0)) {
				t.Errorf("jwt = %+v", j)
			}
		},
	}, {
		name: "getIdentityToken", request: "getIdentityToken",
		want:    map[string]string{"sessionKey": sessionKey},
		secret:  []string{"sessionKey"},
		records: `{"identityToken":"` + idt + `"}`,
		call: func(ctx context.Context, c *upstream.Client, a upstream.Account) (any, error) {
			return c.GetIdentityToken(ctx, a, sessionKey)
		},
		check: func(t *testing.T, v any) {
			if j := v.(*upstream.JWT); j.Token != idt || !j.Expires.Equal(time.Unix(1700003600, 0)) {
				t.Errorf("jwt = %+v", j)
			}
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
				writeJSON(w, okReply(tc.request, tc.records))
			})
			c, logs := newClient(t, func(o *upstream.Options) { o.UserAgent = "sessiond-test/1" })
			v, err := tc.call(t.Context(), c, f.account())
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			tc.check(t, v)

			reqs := f.requests()
			if len(reqs) != 1 {
				t.Fatalf("server saw %d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.method != http.MethodPost {
				t.Errorf("method = %s, want POST", r.method)
			}
			if mt, _, _ := mime.ParseMediaType(r.contentType); mt != "application/x-www-form-urlencoded" {
				t.Errorf("content type = %q", r.contentType)
			}
			if r.path != "/api/104729/" {
				t.Errorf("path = %q, want the template filled in", r.path)
			}
			if r.rawQuery != "" {
				t.Errorf("URL has a query %q; everything belongs in the body", r.rawQuery)
			}
			want := map[string]string{"request": tc.request, "clientCode": "104729", "sendContentType": "1"}
			for k, v := range tc.want {
				want[k] = v
			}
			for k, v := range want {
				if got := r.form[k]; len(got) != 1 || got[0] != v {
					t.Errorf("form %s = %q, want %q", k, got, v)
				}
			}
			if len(r.form) != len(want) {
				t.Errorf("form has fields %v, want exactly those of %v", r.form, want)
			}
			for _, k := range tc.secret {
				if r.form.Get(k) == "" {
					t.Errorf("secret field %s missing from the body", k)
				}
				if strings.Contains(r.path+r.rawQuery, r.form.Get(k)) {
					t.Errorf("secret field %s is in the URL", k)
				}
			}
			assertNoSecrets(t, "log", logs.String())
			if !strings.Contains(logs.String(), `"request":"`+tc.request+`"`) || !strings.Contains(logs.String(), `"result":"ok"`) || !strings.Contains(logs.String(), `"attempts":1`) {
				t.Errorf("no debug line with request, result and attempts: %s", logs.String())
			}
		})
	}
}

func TestSessionLengthOmittedWhenZero(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		writeJSON(w, okReply("verifyUser", `[{"sessionKey":"k","sessionLength":3600}]`))
	})
	c, _ := newClient(t, nil)
	if _, err := c.VerifyUser(t.Context(), f.account(), "u", password, 0); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.requests()[0].form["sessionLength"]; ok {
		t.Error("sessionLength sent although 0 asks for Erply's default")
	}
}

// TestVerifyUserRealShapedReply decodes a full verifyUser reply with string
// numbers, both endpoint list shapes, and fields this client does not know.
func TestVerifyUserRealShapedReply(t *testing.T) {
	body := fixture(t, "leniency/verifyUser.json")
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) { writeJSON(w, body) })
	c, _ := newClient(t, nil)
	s, err := c.VerifyUser(t.Context(), f.account(), "demo@example.com", password, 3600)
	if err != nil {
		t.Fatal(err)
	}
	if s.SessionKey != "sk-abcdef0123456789" || s.SessionLength != 3600 || s.UserID != 6 || s.EmployeeID != 12 ||
		s.EmployeeName != "Demo User" || s.GroupID != 3 || s.GroupName != "Admin" || s.UserName != "demo@example.com" {
		t.Errorf("session = %+v", s)
	}
	if !s.ServerTime.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("ServerTime = %v", s.ServerTime)
	}
	if !strings.HasPrefix(s.Token, "eyJ") || !strings.HasPrefix(s.IdentityToken, "eyJ") {
		t.Errorf("tokens not read: %q %q", s.Token, s.IdentityToken)
	}

	// The raw records as the server sent them, to compare Raw against.
	var top struct {
		Records []map[string]json.RawMessage `json:"records"`
	}
	if err := json.Unmarshal(body, &top); err != nil {
		t.Fatal(err)
	}
	rawList := func(name string) []json.RawMessage {
		var l []json.RawMessage
		if err := json.Unmarshal(top.Records[0][name], &l); err != nil {
			t.Fatal(err)
		}
		return l
	}

	want := map[string][]upstream.Endpoint{
		"cayanGatewayURLs": {
			{URL: "https://cayan-a.example.com/", Token: "tok-a", Priority: 1, Weight: 60},
			{URL: "https://cayan-b.example.com/", Priority: 2, Weight: 40},
		},
		"customerRegistryURLs": {
			{Target: "cr1.example.com", Port: 8443, Priority: 0, Weight: 10},
			{Target: "cr2.example.com", Port: 443, Priority: 0, Weight: 5},
		},
		"couponRegistryURLs": {},
	}
	if len(s.Endpoints) != len(want) {
		t.Errorf("endpoint lists = %v, want %v (epsiDownloadURLs has no priority or weight)", keys(s.Endpoints), keys(want))
	}
	for name, w := range want {
		got, ok := s.Endpoints[name]
		if !ok {
			t.Errorf("list %s missing", name)
			continue
		}
		if len(got) != len(w) {
			t.Errorf("%s has %d endpoints, want %d", name, len(got), len(w))
			continue
		}
		raws := rawList(name)
		for i := range w {
			g := got[i]
			if !bytes.Equal(g.Raw, raws[i]) {
				t.Errorf("%s[%d].Raw = %s, want the bytes as sent %s", name, i, g.Raw, raws[i])
			}
			g.Raw = nil
			if !reflect.DeepEqual(g, w[i]) {
				t.Errorf("%s[%d] = %+v, want %+v", name, i, g, w[i])
			}
		}
	}
	if got := s.Endpoints["customerRegistryURLs"][0].Address(); got != "cr1.example.com:8443" {
		t.Errorf("Address() = %q", got)
	}
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// TestEndpointListsDetectedGenerically finds lists by their shape, not by a
// list of known names.
func TestEndpointListsDetectedGenerically(t *testing.T) {
	records := `{"sessionKey":"k",
		"brandNewServiceURLs":[ {"weight":1, "url":"https://new.example.com/"} ],
		"srvLike":[{"priority":5,"target":"t.example.com"}],
		"tags":[{"priority":1,"name":"no url or target"}],
		"mixed":[{"priority":1,"url":"https://a/"},{"name":"x"}],
		"numbers":[1,2,3],
		"emptyOther":[]}`
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) { writeJSON(w, okReply("verifyUser", records)) })
	c, _ := newClient(t, nil)
	s, err := c.VerifyUser(t.Context(), f.account(), "u", password, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Endpoints) != 2 {
		t.Errorf("lists = %v, want brandNewServiceURLs and srvLike", keys(s.Endpoints))
	}
	if l := s.Endpoints["brandNewServiceURLs"]; len(l) != 1 || l[0].URL != "https://new.example.com/" || l[0].Weight != 1 ||
		string(l[0].Raw) != `{"weight":1, "url":"https://new.example.com/"}` {
		t.Errorf("brandNewServiceURLs = %+v", l)
	}
	if l := s.Endpoints["srvLike"]; len(l) != 1 || l[0].Target != "t.example.com" || l[0].Priority != 5 || l[0].Address() != "t.example.com" {
		t.Errorf("srvLike = %+v", l)
	}
}

func TestLooseTypes(t *testing.T) {
	tests := []struct {
		name    string
		records string
		want    upstream.Session
	}{
		{"strings as numbers", `[{"sessionKey":"k","sessionLength":"3600","userID":"6","employeeID":"0","groupID":"12"}]`,
			upstream.Session{SessionKey: "k", SessionLength: 3600, UserID: 6, GroupID: 12}},
		{"empty strings as 0", `[{"sessionKey":"k","sessionLength":"","userID":"","employeeID":" "}]`,
			upstream.Session{SessionKey: "k"}},
		{"numbers as strings", `{"sessionKey":12345,"userName":42,"sessionLength":3600.0,"userID":6}`,
			upstream.Session{SessionKey: "12345", UserName: "42", SessionLength: 3600, UserID: 6}},
		{"booleans and nulls", `[{"sessionKey":"k","groupID":true,"employeeID":false,"userName":null,"userID":null}]`,
			upstream.Session{SessionKey: "k", GroupID: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) { writeJSON(w, okReply("verifyUser", tc.records)) })
			c, _ := newClient(t, nil)
			s, err := c.VerifyUser(t.Context(), f.account(), "u", password, 0)
			if err != nil {
				t.Fatal(err)
			}
			tc.want.Request = "verifyUser"
			tc.want.ServerTime = time.Unix(1700000000, 0)
			s.Endpoints = nil
			if !s.ServerTime.Equal(tc.want.ServerTime) {
				t.Errorf("ServerTime = %v", s.ServerTime)
			}
			s.ServerTime = tc.want.ServerTime
			if !reflect.DeepEqual(*s, tc.want) {
				t.Errorf("session = %+v, want %+v", *s, tc.want)
			}
		})
	}
}

// TestFixtures decodes the reply files the fuzz corpus starts from: the
// realistic ones and the leniency seeds alike.
func TestFixtures(t *testing.T) {
	serve := func(t *testing.T, name string) upstream.Account {
		body := fixture(t, name)
		return newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) { writeJSON(w, body) }).account()
	}
	c, _ := newClient(t, nil)
	ctx := t.Context()
	for _, dir := range []string{"real", "leniency"} {
		j, err := c.GetJwtToken(ctx, serve(t, dir+"/getJwtToken.json"), sessionKey)
		if err != nil || !j.Expires.Equal(time.Unix(1700086400, 0)) || !j.ServerTime.Equal(time.Unix(1700000000, 0)) {
			t.Errorf("%s getJwtToken = %+v, %v", dir, j, err)
		}
		j, err = c.GetIdentityToken(ctx, serve(t, dir+"/getIdentityToken.json"), sessionKey)
		if err != nil || !j.Expires.Equal(time.Unix(1700003600, 0)) {
			t.Errorf("%s getIdentityToken = %+v, %v", dir, j, err)
		}
		i, err := c.GetSessionKeyInfo(ctx, serve(t, dir+"/getSessionKeyInfo.json"), sessionKey)
		if err != nil || i.Remaining() != time.Hour-100*time.Second {
			t.Errorf("%s getSessionKeyInfo = %+v, %v", dir, i, err)
		}
		v, err := c.VerifyUser(ctx, serve(t, dir+"/verifyUser.json"), "demo@example.com", password, 3600)
		if err != nil || v.SessionKey != "sk-abcdef0123456789" || v.SessionLength != 3600 || v.UserID != 6 || v.EmployeeID != 12 || v.GroupID != 3 {
			t.Errorf("%s verifyUser = %+v, %v", dir, v, err)
		}
		_, err = c.VerifyUser(ctx, serve(t, dir+"/error1002.json"), "demo@example.com", password, 3600)
		if !errors.Is(err, upstream.ErrQuota) {
			t.Errorf("%s error1002: %v, want ErrQuota", dir, err)
		}
	}
	s, err := c.VerifyIdentityToken(ctx, serve(t, "real/verifyIdentityToken.json"), identJWT)
	if err != nil || s.SessionKey != "sk-from-jwt" {
		t.Errorf("verifyIdentityToken = %+v, %v", s, err)
	}
	real := fixture(t, "real/verifyUser.json")
	if strings.Contains(string(real), `"sessionLength":"`) || !strings.Contains(string(real), `"userID":"6"`) {
		t.Error("real/verifyUser.json is not shaped as Erply sends it")
	}
}

func TestJWTWithoutReadableExpiry(t *testing.T) {
	for _, tok := range []string{"opaque-token", makeJWT(`{"sub":"x"}`), makeJWT(`not json`), "a.!!!.c"} {
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
			writeJSON(w, okReply("getJwtToken", `{"token":"`+tok+`"}`))
		})
		c, _ := newClient(t, nil)
		j, err := c.GetJwtToken(t.Context(), f.account(), sessionKey)
		if err != nil || j.Token != tok || !j.Expires.IsZero() {
			t.Errorf("token %q: %+v, %v; want the token with zero Expires", tok, j, err)
		}
	}
}

// TestBadReplies: a reply that cannot be understood is ErrBadReply, is not
// retried, and its content never reaches the error.
func TestBadReplies(t *testing.T) {
	big := okReply("verifyUser", `[{"sessionKey":"k","pad":"`+strings.Repeat("x", 2000)+`"}]`)
	tests := []struct {
		name string
		body []byte
		call string // "login" (default), "jwt" or "info"
	}{
		{"oversized", big, ""},
		{"truncated JSON", okReply("verifyUser", `[{"sessionKey":"k"}]`)[:60], ""},
		{"HTML", []byte("<html>" + password + "</html>"), ""},
		{"empty body", nil, ""},
		{"no status", []byte(`{"records":[{"sessionKey":"` + password + `"}]}`), ""},
		{"status not an object", []byte(`{"status":"ok","records":[]}`), ""},
		{"error status without code", []byte(`{"status":{"responseStatus":"error","errorCode":0}}`), ""},
		{"unreadable errorCode", []byte(`{"status":{"responseStatus":"error","errorCode":"many"}}`), ""},
		{"unknown responseStatus", []byte(`{"status":{"responseStatus":"maybe"},"records":[{"sessionKey":"k"}]}`), ""},
		{"no records", okReply("verifyUser", `[]`), ""},
		{"records not an object", okReply("verifyUser", `["`+password+`"]`), ""},
		{"no sessionKey", okReply("verifyUser", `[{"userID":1}]`), ""},
		{"sessionKey an object", okReply("verifyUser", `[{"sessionKey":{"a":1}}]`), ""},
		{"sessionLength not a number", okReply("verifyUser", `[{"sessionKey":"k","sessionLength":"`+password+`"}]`), ""},
		{"negative sessionLength", okReply("verifyUser", `[{"sessionKey":"k","sessionLength":-5}]`), ""},
		{"jwt without token", okReply("getJwtToken", `{"token":""}`), "jwt"},
		{"info without expiry", okReply("getSessionKeyInfo", `[{"creationUnixTime":1}]`), "info"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) { writeJSON(w, tc.body) })
			reg := prometheus.NewRegistry()
			c, logs := newClient(t, func(o *upstream.Options) { o.MaxReplyBytes = 1024; o.Registerer = reg })
			var err error
			switch tc.call {
			case "jwt":
				_, err = c.GetJwtToken(t.Context(), f.account(), sessionKey)
			case "info":
				_, err = c.GetSessionKeyInfo(t.Context(), f.account(), sessionKey)
			default:
				_, err = c.VerifyUser(t.Context(), f.account(), "u", password, 0)
			}
			if !errors.Is(err, upstream.ErrBadReply) {
				t.Fatalf("err = %v, want ErrBadReply", err)
			}
			if errors.Is(err, upstream.ErrUnavailable) {
				t.Errorf("a bad reply is not unavailability: %v", err)
			}
			var e *upstream.Error
			if !errors.As(err, &e) || e.Request == "" {
				t.Errorf("err = %#v, want *upstream.Error naming the request", err)
			}
			if n := f.calls.Load(); n != 1 {
				t.Errorf("server called %d times, want 1 (bad replies are not retried)", n)
			}
			assertNoSecrets(t, "error", err.Error())
			assertNoSecrets(t, "log", logs.String())
			if got := histCounts(t, reg); got[e.Request+"/bad_reply"] != 1 {
				t.Errorf("histogram counts = %v, want one bad_reply", got)
			}
		})
	}
}

// TestErrorFamilies: every Erply code the daemon acts on maps to its family,
// carries code and field, and is not retried.
func TestErrorFamilies(t *testing.T) {
	tests := []struct {
		code   int
		field  string
		family error
	}{
		{1050, "", upstream.ErrLoginRefused},
		{1051, "", upstream.ErrLoginRefused},
		{1052, "", upstream.ErrLoginRefused},
		{1053, "", upstream.ErrLoginRefused},
		{1054, "", upstream.ErrSessionInvalid},
		{1055, "", upstream.ErrSessionInvalid},
		{1056, "", upstream.ErrSessionTooOld},
		{1002, "", upstream.ErrQuota},
		{1058, "", upstream.ErrAccess},
		{1059, "", upstream.ErrAccess},
		{1065, "", upstream.ErrAccess},
		{1010, "username", upstream.ErrBadRequest},
		{1012, "password", upstream.ErrBadRequest},
		{1016, "sessionLength", upstream.ErrBadRequest},
		{1172, "", upstream.ErrJWT},
		{1173, "", upstream.ErrJWT},
		{1187, "", upstream.ErrJWT},
		{1188, "", upstream.ErrJWT},
		{1190, "", upstream.ErrJWT},
		{1191, "", upstream.ErrJWT},
		{1194, "", upstream.ErrJWT},
	}
	families := []error{upstream.ErrLoginRefused, upstream.ErrSessionInvalid, upstream.ErrSessionTooOld, upstream.ErrQuota,
		upstream.ErrMaintenance, upstream.ErrRateLimited, upstream.ErrJWT, upstream.ErrBadRequest, upstream.ErrAccess,
		upstream.ErrBadReply, upstream.ErrUnavailable}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.code), func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
				writeJSON(w, errReply(r.FormValue("request"), tc.code, tc.field))
			})
			c, _ := newClient(t, nil)
			_, err := c.SwitchUser(t.Context(), f.account(), sessionKey, pin, 0)
			for _, fam := range families {
				if got := errors.Is(err, fam); got != (fam == tc.family) {
					t.Errorf("errors.Is(%v, %v) = %v", err, fam, got)
				}
			}
			var e *upstream.Error
			if !errors.As(err, &e) || e.Code != tc.code || e.Field != tc.field || e.Request != "switchUser" || upstream.CodeOf(err) != tc.code {
				t.Errorf("err = %#v", err)
			}
			if n := f.calls.Load(); n != 1 {
				t.Errorf("server called %d times, want exactly 1", n)
			}
			want := fmt.Sprintf("erply switchUser: error %d (%v)", tc.code, tc.family)
			if tc.field != "" {
				want += ", field " + tc.field
			}
			if err.Error() != want {
				t.Errorf("error string %q, want %q", err, want)
			}
		})
	}
}

// TestCallReturnsReplyWithErplyError: Call hands back Erply's decoded reply
// along with the error, so that a proxy can pass it on unchanged.
func TestCallReturnsReplyWithErplyError(t *testing.T) {
	body := fixture(t, "real/error1051.json")
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) { writeJSON(w, body) })
	c, _ := newClient(t, nil)
	reply, err := c.Call(t.Context(), f.account(), "verifyUser", url.Values{"username": {"u"}, "password": {password}})
	if upstream.CodeOf(err) != 1051 {
		t.Fatalf("err = %v", err)
	}
	if reply == nil || !bytes.Equal(reply.Body, body) || reply.Status.ErrorCode != 1051 || reply.Status.ResponseStatus != "error" {
		t.Errorf("reply = %+v", reply)
	}
	if f.requests()[0].form.Get("password") != password {
		t.Error("Call did not send the form")
	}
}

func TestCallRecordsBothShapes(t *testing.T) {
	for _, records := range []string{`[{"a":1},{"a":2}]`, `{"a":1}`} {
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) { writeJSON(w, okReply("getThings", records)) })
		c, _ := newClient(t, nil)
		reply, err := c.Call(t.Context(), f.account(), "getThings", nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(reply.Records) != records || reply.Status.Request != "getThings" || reply.Status.RecordsTotal != 1 {
			t.Errorf("reply = %+v", reply)
		}
		first, err := reply.FirstRecord()
		if err != nil || string(first) != `{"a":1}` {
			t.Errorf("FirstRecord = %s, %v", first, err)
		}
	}
}

func TestQuotaRetryAfter(t *testing.T) {
	t.Run("Erply's clock", func(t *testing.T) {
		body := fixture(t, "real/error1002.json") // requestUnixTime 1699999940
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) { writeJSON(w, body) })
		c, _ := newClient(t, nil)
		_, err := c.VerifyUser(t.Context(), f.account(), "u", password, 0)
		server := time.Unix(1699999940, 0)
		want := server.Truncate(time.Hour).Add(time.Hour).Sub(server)
		var e *upstream.Error
		if !errors.As(err, &e) || !errors.Is(err, upstream.ErrQuota) || e.RetryAfter != want {
			t.Errorf("err = %#v, want ErrQuota with RetryAfter %v", err, want)
		}
		if n := f.calls.Load(); n != 1 {
			t.Errorf("server called %d times, want 1", n)
		}
	})
	t.Run("local clock", func(t *testing.T) {
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
			writeJSON(w, []byte(`{"status":{"responseStatus":"error","errorCode":1002}}`))
		})
		clk := clock.NewFake(time.Date(2024, 5, 1, 10, 45, 30, 0, time.UTC))
		c, _ := newClient(t, func(o *upstream.Options) { o.Clock = clk })
		_, err := c.VerifyUser(t.Context(), f.account(), "u", password, 0)
		var e *upstream.Error
		if !errors.As(err, &e) || e.RetryAfter != 14*time.Minute+30*time.Second {
			t.Errorf("err = %#v, want RetryAfter 14m30s", err)
		}
		if n := f.calls.Load(); n != 1 {
			t.Errorf("server called %d times, want 1", n)
		}
	})
}

func TestRetries(t *testing.T) {
	const retryMax = 3
	tests := []struct {
		name      string
		handler   func(w http.ResponseWriter, r *http.Request, n int64)
		wantCalls int64
		wantErr   error // nil: success
		status    int
	}{{
		name: "5xx retried up to RetryMax",
		handler: func(w http.ResponseWriter, r *http.Request, n int64) {
			http.Error(w, password, http.StatusServiceUnavailable)
		},
		wantCalls: retryMax + 1, wantErr: upstream.ErrUnavailable, status: 503,
	}, {
		name: "5xx then success",
		handler: func(w http.ResponseWriter, r *http.Request, n int64) {
			if n <= 2 {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			writeJSON(w, okReply("verifyUser", `[{"sessionKey":"k"}]`))
		},
		wantCalls: 3,
	}, {
		name:      "maintenance retried up to RetryMax",
		handler:   func(w http.ResponseWriter, r *http.Request, n int64) { writeJSON(w, errReply("verifyUser", 1000, "")) },
		wantCalls: retryMax + 1, wantErr: upstream.ErrMaintenance,
	}, {
		name: "maintenance then success",
		handler: func(w http.ResponseWriter, r *http.Request, n int64) {
			if n == 1 {
				writeJSON(w, errReply("verifyUser", 1000, ""))
				return
			}
			writeJSON(w, okReply("verifyUser", `[{"sessionKey":"k"}]`))
		},
		wantCalls: 2,
	}, {
		name: "connection reset before the reply is retried",
		handler: func(w http.ResponseWriter, r *http.Request, n int64) {
			if n == 1 {
				resetConn(t, w)
				return
			}
			writeJSON(w, okReply("verifyUser", `[{"sessionKey":"k"}]`))
		},
		wantCalls: 2,
	}, {
		name: "reply cut off after the headers is not retried",
		handler: func(w http.ResponseWriter, r *http.Request, n int64) {
			w.Header().Set("Content-Length", "500")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte(`{"status":{"responseStatus":"ok"`))
			w.(http.Flusher).Flush()
			resetConn(t, w)
		},
		wantCalls: 1, wantErr: upstream.ErrUnavailable,
	}, {
		name:      "login refused called once",
		handler:   func(w http.ResponseWriter, r *http.Request, n int64) { writeJSON(w, errReply("verifyUser", 1051, "")) },
		wantCalls: 1, wantErr: upstream.ErrLoginRefused,
	}, {
		name:      "session expired called once",
		handler:   func(w http.ResponseWriter, r *http.Request, n int64) { writeJSON(w, errReply("verifyUser", 1054, "")) },
		wantCalls: 1, wantErr: upstream.ErrSessionInvalid,
	}, {
		name:      "HTTP 4xx not retried",
		handler:   func(w http.ResponseWriter, r *http.Request, n int64) { http.Error(w, password, http.StatusForbidden) },
		wantCalls: 1, status: 403,
	}, {
		name: "redirect not followed",
		handler: func(w http.ResponseWriter, r *http.Request, n int64) {
			http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
		},
		wantCalls: 1, status: 307,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, tc.handler)
			c, logs := newClient(t, func(o *upstream.Options) { o.RetryMax = retryMax })
			s, err := c.VerifyUser(t.Context(), f.account(), "u", password, 0)
			if n := f.calls.Load(); n != tc.wantCalls {
				t.Errorf("server called %d times, want %d", n, tc.wantCalls)
			}
			switch {
			case tc.wantErr == nil && tc.status == 0:
				if err != nil || s.SessionKey != "k" {
					t.Fatalf("got %+v, %v; want success", s, err)
				}
				return
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			var e *upstream.Error
			if !errors.As(err, &e) || e.HTTPStatus != tc.status {
				t.Errorf("err = %#v, want *Error with HTTP status %d", err, tc.status)
			}
			if tc.status >= 400 && tc.status < 500 && errors.Is(err, upstream.ErrUnavailable) {
				t.Errorf("HTTP %d is not unavailability", tc.status)
			}
			assertNoSecrets(t, "error", err.Error())
			assertNoSecrets(t, "log", logs.String())
			if !strings.Contains(logs.String(), fmt.Sprintf(`"attempts":%d`, tc.wantCalls)) {
				t.Errorf("log does not count %d attempts: %s", tc.wantCalls, logs.String())
			}
		})
	}
}

// resetConn closes the connection under w abruptly (RST, not FIN).
func resetConn(t *testing.T, w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
}

func TestConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, logs := newClient(t, nil)
	_, err = c.VerifyUser(t.Context(), upstream.Account{ClientCode: "1", APIURL: "http://" + addr + "/api/?x={clientCode}"}, "u", password, 0)
	if !errors.Is(err, upstream.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "/api/") || strings.Contains(err.Error(), "x=1") {
		t.Errorf("error quotes the URL: %v", err)
	}
	if !strings.Contains(logs.String(), `"attempts":4`) {
		t.Errorf("connection refused was not retried 3 times: %s", logs.String())
	}
}

func TestInvalidAccount(t *testing.T) {
	c, _ := newClient(t, nil)
	for _, acct := range []upstream.Account{
		{ClientCode: "", APIURL: "http://127.0.0.1:1/"},
		{ClientCode: "1", APIURL: "ftp://{clientCode}.example.com/"},
		{ClientCode: "1", APIURL: "http://exa mple.com/" + password},
	} {
		_, err := c.VerifyUser(t.Context(), acct, "u", password, 0)
		if !errors.Is(err, upstream.ErrBadRequest) || errors.Is(err, upstream.ErrUnavailable) {
			t.Errorf("%+v: err = %v, want ErrBadRequest only", acct, err)
		}
		if err != nil {
			assertNoSecrets(t, "error", err.Error())
		}
	}
}

func TestRateLimit(t *testing.T) {
	okAfter429 := func(retryAfter string) func(w http.ResponseWriter, r *http.Request, n int64) {
		return func(w http.ResponseWriter, r *http.Request, n int64) {
			if n == 1 {
				if retryAfter != "" {
					w.Header().Set("Retry-After", retryAfter)
				}
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			writeJSON(w, okReply("verifyUser", `[{"sessionKey":"k"}]`))
		}
	}
	gap := func(t *testing.T, f *fake) time.Duration {
		reqs := f.requests()
		if len(reqs) != 2 {
			t.Fatalf("server saw %d requests, want 2", len(reqs))
		}
		return reqs[1].at.Sub(reqs[0].at)
	}

	t.Run("waits at least RateLimitWait", func(t *testing.T) {
		const wait = 150 * time.Millisecond
		f := newFake(t, okAfter429("0"))
		c, _ := newClient(t, func(o *upstream.Options) { o.RateLimitWait = wait })
		if _, err := c.VerifyUser(t.Context(), f.account(), "u", password, 0); err != nil {
			t.Fatal(err)
		}
		if g := gap(t, f); g < wait {
			t.Errorf("retried after %v, want at least %v", g, wait)
		}
	})
	t.Run("a longer Retry-After wins", func(t *testing.T) {
		f := newFake(t, okAfter429("1"))
		c, _ := newClient(t, func(o *upstream.Options) { o.RateLimitWait = 10 * time.Millisecond; o.RetryWaitMax = 2 * time.Second })
		if _, err := c.VerifyUser(t.Context(), f.account(), "u", password, 0); err != nil {
			t.Fatal(err)
		}
		if g := gap(t, f); g < time.Second {
			t.Errorf("retried after %v, want at least Retry-After 1s", g)
		}
	})
	t.Run("a wait past the deadline returns at once", func(t *testing.T) {
		f := newFake(t, okAfter429(""))
		c, _ := newClient(t, func(o *upstream.Options) { o.RateLimitWait = time.Hour })
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, err := c.VerifyUser(ctx, f.account(), "u", password, 0)
		var e *upstream.Error
		if !errors.Is(err, upstream.ErrRateLimited) || !errors.As(err, &e) || e.RetryAfter != time.Hour || e.HTTPStatus != 429 {
			t.Errorf("err = %#v, want ErrRateLimited with RetryAfter 1h", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %v", d)
		}
		if n := f.calls.Load(); n != 1 {
			t.Errorf("server called %d times, want 1", n)
		}
	})
	t.Run("429 retried up to RetryMax", func(t *testing.T) {
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int64) { w.WriteHeader(http.StatusTooManyRequests) })
		c, _ := newClient(t, func(o *upstream.Options) { o.RetryMax = 2 })
		_, err := c.VerifyUser(t.Context(), f.account(), "u", password, 0)
		if !errors.Is(err, upstream.ErrRateLimited) || errors.Is(err, upstream.ErrUnavailable) {
			t.Errorf("err = %v, want ErrRateLimited", err)
		}
		if n := f.calls.Load(); n != 3 {
			t.Errorf("server called %d times, want 3", n)
		}
	})
}

// TestContextEnds: a hanging Erply does not hold a caller past its deadline.
func TestContextEnds(t *testing.T) {
	hang := func(release <-chan struct{}) func(w http.ResponseWriter, r *http.Request, n int64) {
		return func(w http.ResponseWriter, r *http.Request, n int64) {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}
	}
	t.Run("deadline while the server hangs", func(t *testing.T) {
		release := make(chan struct{})
		f := newFake(t, hang(release))
		t.Cleanup(func() { close(release) })
		c, _ := newClient(t, nil)
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.VerifyUser(ctx, f.account(), "u", password, 0)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("returned after %v, deadline was 100ms", d)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want context.DeadlineExceeded", err)
		}
		var e *upstream.Error
		if !errors.As(err, &e) || e.Request != "verifyUser" {
			t.Errorf("err = %#v, want *upstream.Error", err)
		}
	})
	t.Run("cancel while the server hangs", func(t *testing.T) {
		release := make(chan struct{})
		f := newFake(t, hang(release))
		t.Cleanup(func() { close(release) })
		c, _ := newClient(t, nil)
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := c.GetJwtToken(ctx, f.account(), sessionKey)
		if !errors.Is(err, context.Canceled) || errors.Is(err, upstream.ErrUnavailable) {
			t.Errorf("err = %v, want context.Canceled and not ErrUnavailable", err)
		}
	})
	t.Run("cancel while waiting to retry", func(t *testing.T) {
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int64) { w.WriteHeader(http.StatusServiceUnavailable) })
		// The client logs "erply call retrying" just before it waits.
		waiting := make(chan struct{})
		var once sync.Once
		c, _ := newClient(t, func(o *upstream.Options) {
			o.RetryWaitMin, o.RetryWaitMax = time.Hour, time.Hour
			o.Logger = o.Logger.Hook(zerolog.HookFunc(func(_ *zerolog.Event, _ zerolog.Level, msg string) {
				if msg == "erply call retrying" {
					once.Do(func() { close(waiting) })
				}
			}))
		})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go func() {
			select {
			case <-waiting:
				cancel()
			case <-ctx.Done():
			}
		}()
		_, err := c.VerifyUser(ctx, f.account(), "u", password, 0)
		var e *upstream.Error
		if !errors.Is(err, context.Canceled) || !errors.As(err, &e) || e.HTTPStatus != 503 {
			t.Errorf("err = %#v, want context.Canceled keeping HTTP 503", err)
		}
		if n := f.calls.Load(); n != 1 {
			t.Errorf("server called %d times, want 1", n)
		}
	})
	t.Run("backoff past the deadline returns the last error at once", func(t *testing.T) {
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int64) { w.WriteHeader(http.StatusBadGateway) })
		c, _ := newClient(t, func(o *upstream.Options) { o.RetryWaitMin = time.Minute; o.RetryWaitMax = time.Minute })
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, err := c.VerifyUser(ctx, f.account(), "u", password, 0)
		var e *upstream.Error
		if !errors.As(err, &e) || e.HTTPStatus != 502 || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want HTTP 502", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %v", d)
		}
	})
}

// histCounts returns the histogram's sample count by "request/result".
func histCounts(t *testing.T, g prometheus.Gatherer) map[string]uint64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "erply_sessiond_upstream_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var req, res string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "request":
					req = l.GetValue()
				case "result":
					res = l.GetValue()
				}
			}
			out[req+"/"+res] = m.GetHistogram().GetSampleCount()
		}
	}
	return out
}

func TestMetrics(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		switch r.FormValue("username") {
		case "ok":
			writeJSON(w, okReply("verifyUser", `[{"sessionKey":"k"}]`))
		case "refused":
			writeJSON(w, errReply("verifyUser", 1051, ""))
		case "down":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "garbage":
			writeJSON(w, []byte("{"))
		}
	})
	reg := prometheus.NewRegistry()
	// A clock that stands still makes every duration 0, so the text is exact.
	clk := clock.NewFake(time.Unix(1700000000, 0))
	opts := func(o *upstream.Options) { o.Registerer = reg; o.Clock = clk; o.RetryMax = 1 }
	c, _ := newClient(t, opts)
	c2, _ := newClient(t, opts) // a second client shares the registered histogram
	for _, user := range []string{"ok", "ok", "refused", "down", "garbage"} {
		_, _ = c.VerifyUser(t.Context(), f.account(), user, password, 0)
	}
	_, _ = c2.GetJwtToken(t.Context(), f.account(), sessionKey) // no username: empty body, bad reply

	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	if n, err := testutil.GatherAndCount(reg, "erply_sessiond_upstream_request_duration_seconds"); err != nil || n != 5 {
		t.Errorf("series = %d, %v; want 5", n, err)
	}
	series := func(req, res string, n int) string {
		var b strings.Builder
		for _, le := range []string{"0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "+Inf"} {
			fmt.Fprintf(&b, "erply_sessiond_upstream_request_duration_seconds_bucket{request=%q,result=%q,le=%q} %d\n", req, res, le, n)
		}
		fmt.Fprintf(&b, "erply_sessiond_upstream_request_duration_seconds_sum{request=%q,result=%q} 0\n", req, res)
		fmt.Fprintf(&b, "erply_sessiond_upstream_request_duration_seconds_count{request=%q,result=%q} %d\n", req, res, n)
		return b.String()
	}
	want := `# HELP erply_sessiond_upstream_request_duration_seconds Duration of Erply API calls, retries included, by request name and result ("ok", "erply_<code>", "http_<status>", "bad_reply", "canceled", "timeout", "network", "config").
# TYPE erply_sessiond_upstream_request_duration_seconds histogram
` + series("getJwtToken", "bad_reply", 1) + series("verifyUser", "bad_reply", 1) + series("verifyUser", "erply_1051", 1) +
		series("verifyUser", "http_503", 1) + series("verifyUser", "ok", 2)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "erply_sessiond_upstream_request_duration_seconds"); err != nil {
		t.Error(err)
	}
	if n := f.calls.Load(); n != 7 {
		t.Errorf("server called %d times, want 7 (503 retried once)", n)
	}
}
