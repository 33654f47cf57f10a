package erplytest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/clock"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// start is a whole second so that Erply's whole-second timestamps are exact.
var start = time.Unix(1_700_000_000, 0)

// env is one fake server seeded with the demo account, and a client for it.
type env struct {
	t                 *testing.T
	clk               *clock.Fake
	s                 *Server
	c                 *http.Client
	cc, user, pw, pin string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	clk := clock.NewFake(start)
	s := New(clk)
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		s.Close()
	})
	cc, user, pw, pin := s.SeedDemo()
	return &env{t: t, clk: clk, s: s, c: &http.Client{Transport: tr}, cc: cc, user: user, pw: pw, pin: pin}
}

// reply is Erply's envelope as a client sees it.
type reply struct {
	Status struct {
		Request           string  `json:"request"`
		RequestUnixTime   int64   `json:"requestUnixTime"`
		ResponseStatus    string  `json:"responseStatus"`
		ErrorCode         int     `json:"errorCode"`
		ErrorField        string  `json:"errorField"`
		GenerationTime    float64 `json:"generationTime"`
		RecordsTotal      int     `json:"recordsTotal"`
		RecordsInResponse int     `json:"recordsInResponse"`
	} `json:"status"`
	Records json.RawMessage `json:"records"`
}

// form builds a request form from key/value pairs, with the fields every call carries.
func form(clientCode, request string, kv ...string) url.Values {
	f := url.Values{"request": {request}, "clientCode": {clientCode}, "sendContentType": {"1"}}
	for i := 0; i+1 < len(kv); i += 2 {
		f.Set(kv[i], kv[i+1])
	}
	return f
}

// apiURL is the account's expanded API URL.
func (e *env) apiURL(clientCode string) string {
	return strings.ReplaceAll(e.s.APIURL(), "{clientCode}", clientCode)
}

// post sends a form to rawURL and returns the HTTP response with its body read.
func (e *env) post(ctx context.Context, rawURL string, f url.Values) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, strings.NewReader(f.Encode()))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := e.c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// callIn makes an API call to an account and decodes the envelope, failing
// the test on anything but HTTP 200 with JSON.
func (e *env) callIn(clientCode, request string, kv ...string) reply {
	e.t.Helper()
	resp, body, err := e.post(context.Background(), e.apiURL(clientCode), form(clientCode, request, kv...))
	if err != nil {
		e.t.Fatalf("%s: %v", request, err)
	}
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("%s: HTTP %d: %s", request, resp.StatusCode, body)
	}
	var r reply
	if err := json.Unmarshal(body, &r); err != nil {
		e.t.Fatalf("%s: %v: %s", request, err, body)
	}
	if r.Status.Request != request || r.Status.RequestUnixTime != e.clk.Now().Unix() {
		e.t.Fatalf("%s: status %+v, want request %q at %d", request, r.Status, request, e.clk.Now().Unix())
	}
	return r
}

// call makes an API call to the demo account.
func (e *env) call(request string, kv ...string) reply {
	e.t.Helper()
	return e.callIn(e.cc, request, kv...)
}

// wantError checks that r is an error envelope with code and field.
func (e *env) wantError(r reply, code int, field string) {
	e.t.Helper()
	if r.Status.ResponseStatus != "error" || r.Status.ErrorCode != code || r.Status.ErrorField != field {
		e.t.Fatalf("%s: status %+v, want error %d field %q", r.Status.Request, r.Status, code, field)
	}
	if string(r.Records) != "[]" || r.Status.RecordsTotal != 0 || r.Status.RecordsInResponse != 0 {
		e.t.Fatalf("%s: error reply records = %s (%d/%d), want [] as Erply sends", r.Status.Request, r.Records,
			r.Status.RecordsTotal, r.Status.RecordsInResponse)
	}
}

// record checks r is ok with exactly one record in an array, and returns it.
func (e *env) record(r reply) map[string]any {
	e.t.Helper()
	if r.Status.ResponseStatus != "ok" || r.Status.ErrorCode != 0 {
		e.t.Fatalf("%s: status %+v, want ok", r.Status.Request, r.Status)
	}
	var recs []map[string]any
	if err := json.Unmarshal(r.Records, &recs); err != nil || len(recs) != 1 {
		e.t.Fatalf("%s: records %s, want an array of one (%v)", r.Status.Request, r.Records, err)
	}
	if r.Status.RecordsTotal != 1 || r.Status.RecordsInResponse != 1 {
		e.t.Fatalf("%s: status %+v, want 1 record", r.Status.Request, r.Status)
	}
	return recs[0]
}

// object checks r is ok with an object as records, and returns it.
func (e *env) object(r reply) map[string]any {
	e.t.Helper()
	if r.Status.ResponseStatus != "ok" {
		e.t.Fatalf("%s: status %+v, want ok", r.Status.Request, r.Status)
	}
	var rec map[string]any
	if err := json.Unmarshal(r.Records, &rec); err != nil {
		e.t.Fatalf("%s: records %s, want an object (%v)", r.Status.Request, r.Records, err)
	}
	return rec
}

// login logs the demo manager in and returns the session key.
func (e *env) login(kv ...string) string {
	e.t.Helper()
	rec := e.record(e.call("verifyUser", append([]string{"username", e.user, "password", e.pw}, kv...)...))
	return rec["sessionKey"].(string)
}

// keyInfo returns getSessionKeyInfo's creation and expiry times.
func (e *env) keyInfo(key string) (created, expires int64) {
	e.t.Helper()
	rec := e.record(e.call("getSessionKeyInfo", "sessionKey", key))
	c, ok1 := rec["creationUnixTime"].(string)
	x, ok2 := rec["expireUnixTime"].(string)
	if !ok1 || !ok2 {
		e.t.Fatalf("getSessionKeyInfo record %v: times are not strings", rec)
	}
	return atoi64(e.t, c), atoi64(e.t, x)
}

func atoi64(t *testing.T, s string) int64 {
	t.Helper()
	var n int64
	if err := json.Unmarshal([]byte(s), &n); err != nil {
		t.Fatalf("%q is not an integer", s)
	}
	return n
}

// jwtClaims decodes a JWT's payload without checking its signature, as a client would.
func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %d parts", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	return c
}
