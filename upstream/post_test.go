package upstream_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// TestPostIsBuiltLikeCall: a proxied call and a login reach Erply the same
// way (method, URL, content type, User-Agent, clientCode and
// sendContentType), and Post hands back Erply's reply as it came, unread
// and not retried.
func TestPostIsBuiltLikeCall(t *testing.T) {
	const reply = `{"status":{"responseStatus":"error","errorCode":1000}}`
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		if r.FormValue("request") == "verifyUser" {
			writeJSON(w, okReply("verifyUser", `[{"sessionKey":"k","sessionLength":3600}]`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, reply)
	})
	c, _ := newClient(t, func(o *upstream.Options) { o.UserAgent = "erply-sessiond/1.2.3" })
	if _, err := c.VerifyUser(t.Context(), f.account(), "clerk", password, 0); err != nil {
		t.Fatal(err)
	}
	form := url.Values{"request": {"getProducts"}, "sessionKey": {sessionKey}, "pageNo": {"2"}}
	resp, err := c.Post(t.Context(), f.account(), form)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || string(body) != reply {
		t.Errorf("Post returned %d %q, want Erply's 503 and bytes unchanged", resp.StatusCode, body)
	}
	if n := f.calls.Load(); n != 2 {
		t.Errorf("server called %d times, want 2: Post never retries (not even 503 with 1000)", n)
	}
	if len(form) != 3 {
		t.Errorf("Post changed the caller's form: %v", form)
	}

	reqs := f.requests()
	login, post := reqs[0], reqs[1]
	if login.method != post.method || login.path != post.path || login.contentType != post.contentType || login.userAgent != post.userAgent {
		t.Errorf("login %+v and Post %+v differ in method, path, content type or User-Agent", login, post)
	}
	if post.userAgent != "erply-sessiond/1.2.3" {
		t.Errorf("User-Agent %q, want the client's", post.userAgent)
	}
	want := url.Values{"request": {"getProducts"}, "sessionKey": {sessionKey}, "pageNo": {"2"},
		"clientCode": {"104729"}, "sendContentType": {"1"}}
	if !reflect.DeepEqual(post.form, want) {
		t.Errorf("Post sent %v, want %v", post.form, want)
	}
}

// TestPostOutlivesTheAttemptTimeout: the HTTP client's Timeout bounds one
// attempt of a login; a proxied call may take longer, bounded by its ctx.
func TestPostOutlivesTheAttemptTimeout(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		writeJSON(w, okReply("verifyUser", `[{"sessionKey":"k","sessionLength":3600}]`))
	})
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c, _ := newClient(t, func(o *upstream.Options) {
		o.RetryMax = -1
		o.HTTPClient = &http.Client{Transport: tr, Timeout: time.Nanosecond}
	})
	if _, err := c.VerifyUser(t.Context(), f.account(), "clerk", password, 0); err == nil {
		t.Fatal("a login within a 1 ns attempt timeout succeeded")
	}
	resp, err := c.Post(t.Context(), f.account(), url.Values{"request": {"verifyUser"}})
	if err != nil {
		t.Fatalf("Post was held to the attempt timeout: %v", err)
	}
	resp.Body.Close()
}

// TestPostErrors: a request that could not be sent says why without the
// URL, and a redirect is handed back, not followed (it would carry the
// session key elsewhere).
func TestPostErrors(t *testing.T) {
	c, _ := newClient(t, nil)

	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	acct := upstream.Account{ClientCode: "104729", APIURL: closed.URL + "/private-path/api/"}
	if _, err := c.Post(t.Context(), acct, url.Values{"request": {"getProducts"}}); err == nil || strings.Contains(err.Error(), "private-path") {
		t.Errorf("Post to a closed port: %v; want an error without the URL", err)
	}

	for _, bad := range []upstream.Account{{ClientCode: "", APIURL: "http://localhost/api/"}, {ClientCode: "1", APIURL: "ftp://private-path/"}} {
		if _, err := c.Post(t.Context(), bad, url.Values{"request": {"getProducts"}}); err == nil || strings.Contains(err.Error(), "private-path") {
			t.Errorf("Post with account %+v: %v; want an error without the URL", bad, err)
		}
	}

	elsewhere := newFake(t, func(http.ResponseWriter, *http.Request, int64) {})
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		http.Redirect(w, r, elsewhere.srv.URL+"/steal", http.StatusTemporaryRedirect)
	})
	resp, err := c.Post(t.Context(), f.account(), url.Values{"request": {"getProducts"}, "sessionKey": {sessionKey}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect || elsewhere.calls.Load() != 0 {
		t.Errorf("redirect: status %d, %d requests to its target; want 307 handed back and none", resp.StatusCode, elsewhere.calls.Load())
	}
}
