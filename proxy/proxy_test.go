package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erply-sessiond/erply-sessiond/proxy"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

const getProducts = "request=getProducts"

func TestProxyInjectsSession(t *testing.T) {
	e := newEnv(t, envConfig{})
	key := e.key("pos")

	a := e.post("pos", "request=getProducts&pageNo=2&recordsOnPage=5&name=caf%C3%A9+au+lait&ids=1&ids=2")
	if a.status != http.StatusOK {
		t.Fatalf("answer %s", a)
	}
	if st := envelope(t, a); st.ResponseStatus != "ok" || st.ErrorCode != 0 {
		t.Fatalf("Erply status %+v", st)
	}
	got := e.fake.LastForm("getProducts")
	want := url.Values{
		"request": {"getProducts"}, "clientCode": {e.code}, "sessionKey": {key}, "sendContentType": {"1"},
		"pageNo": {"2"}, "recordsOnPage": {"5"}, "name": {"café au lait"}, "ids": {"1", "2"},
	}
	if got.Encode() != want.Encode() {
		t.Errorf("Erply received\n%v\nwant\n%v", got, want)
	}
	if n := e.fake.QueryStringsSeen(); n != 0 {
		t.Errorf("%d upstream requests carried a query string", n)
	}
	if n := e.requests("pos", "getProducts", "ok"); n != 1 {
		t.Errorf("requests_total{pos,getProducts,ok} = %v, want 1", n)
	}
	if n := e.metric("erply_sessiond_proxy_inflight", map[string]string{"client_code": e.code}); n != 0 {
		t.Errorf("inflight = %v after the call, want 0", n)
	}
}

func TestProxyMetricsExposition(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.post("pos", getProducts)
	e.post("pos", "request=bad-name!&x=1")               // Erply answers; the name is not a plain name
	e.post("pos", "request=getProducts&sessionKey=mine") // rejected
	e.fake.SetHandler("noSuchCall", func(url.Values) (int, []byte) {
		return 200, []byte(`{"status":{"responseStatus":"error","errorCode":1005,"errorField":"request"},"records":null}`)
	})
	e.post("pos", "request=noSuchCall") // Erply does not know it: kept out of the labels
	want := `
# HELP erply_sessiond_proxy_requests_total Proxied Erply calls by credential, Erply request name ("other" unless Erply has carried out a call of that name) and outcome (ok, erply_error, session_retry_ok, rejected, paused, busy, upstream_error).
# TYPE erply_sessiond_proxy_requests_total counter
erply_sessiond_proxy_requests_total{credential="pos",outcome="erply_error",request="other"} 1
erply_sessiond_proxy_requests_total{credential="pos",outcome="ok",request="getProducts"} 1
erply_sessiond_proxy_requests_total{credential="pos",outcome="ok",request="other"} 1
erply_sessiond_proxy_requests_total{credential="pos",outcome="rejected",request="getProducts"} 1
# HELP erply_sessiond_proxy_inflight Proxied calls holding an upstream slot now, by client code.
# TYPE erply_sessiond_proxy_inflight gauge
erply_sessiond_proxy_inflight{client_code="104729"} 0
# HELP erply_sessiond_proxy_paused_seconds_total Seconds proxied calls were paused for Erply's limits (429, 1002), by client code; added when a pause is set.
# TYPE erply_sessiond_proxy_paused_seconds_total counter
erply_sessiond_proxy_paused_seconds_total{client_code="104729"} 0
`
	if err := testutil.GatherAndCompare(e.reg, strings.NewReader(want),
		"erply_sessiond_proxy_requests_total", "erply_sessiond_proxy_inflight",
		"erply_sessiond_proxy_session_retries_total", "erply_sessiond_proxy_paused_seconds_total"); err != nil {
		t.Error(err)
	}
	if strings.Contains(fmt.Sprint(e.reg.Gather()), "mine") {
		t.Error("a form value reached the metrics")
	}
}

func TestProxyReplyBytesUnchanged(t *testing.T) {
	big := `{"status":{"request":"getProducts","responseStatus":"ok","errorCode":0},"records":[` +
		strings.Repeat(`{"productID":1,"name":"Kohv \u00e4\u00f6 ☕"},`, 40000) + `{"productID":2}]}`
	recordsFirst := `{"records":[` + strings.Repeat(`{"id":"x"},`, 500) + `{"id":"y"}],"status":{"responseStatus":"ok","errorCode":0}}`
	tests := []struct {
		name     string
		maxReply int64
		status   int
		body     string
	}{
		{"distinctive envelope", 0, 200, "{ \"status\" : {\"request\":\"getProducts\",\"responseStatus\":\"ok\",\"errorCode\":\"0\", \"x\": 1e3},\n" +
			"\t\"records\": [ {\"name\": \"\\u00e4<b>&\", \"emoji\": \"🦀\"} ] }  \n\n"},
		{"large reply streamed", 0, 200, big},
		{"status after records, past MaxReply", 1024, 200, recordsFirst},
		{"not JSON", 0, 200, "<html>maintenance</html>"},
		{"empty", 0, 200, ""},
		{"HTTP 500 not retried", 0, 500, `{"oops":true}`},
		{"HTTP 404", 0, 404, "no such account\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envConfig{tune: func(o *proxy.Options) { o.MaxReply = tc.maxReply }})
			e.fake.SetHandler("getProducts", func(url.Values) (int, []byte) { return tc.status, []byte(tc.body) })
			a := e.post("pos", getProducts)
			if a.status != tc.status {
				t.Fatalf("status %d, want %d", a.status, tc.status)
			}
			if !bytes.Equal(a.body, []byte(tc.body)) {
				t.Fatalf("caller got %d bytes, Erply sent %d; differ", len(a.body), len(tc.body))
			}
			if ct := a.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want Erply's application/json", ct)
			}
			if n := e.fake.Calls("getProducts"); n != 1 {
				t.Errorf("Erply saw %d calls, want 1 (nothing is retried but 1054/1055)", n)
			}
		})
	}
}

func TestProxyResendsAfterDeletedSession(t *testing.T) {
	e := newEnv(t, envConfig{})
	stale := e.key("pos")
	e.fake.DeleteSession(stale)
	logins := e.fake.Calls("verifyUser")

	a := e.post("pos", "request=getProducts&pageNo=3")
	if a.status != http.StatusOK {
		t.Fatalf("answer %s", a)
	}
	if st := envelope(t, a); st.ResponseStatus != "ok" {
		t.Fatalf("caller saw Erply status %+v, want one successful answer", st)
	}
	if n := e.fake.Calls("verifyUser") - logins; n != 1 {
		t.Errorf("%d re-logins, want 1", n)
	}
	if n := e.fake.Calls("getProducts"); n != 2 {
		t.Errorf("Erply saw %d getProducts calls, want 2", n)
	}
	fresh := e.key("pos")
	if fresh == stale {
		t.Fatal("the pool still holds the deleted key")
	}
	if f := e.fake.LastForm("getProducts"); f.Get("sessionKey") != fresh || f.Get("pageNo") != "3" {
		t.Errorf("re-sent with sessionKey fresh=%v pageNo=%q", f.Get("sessionKey") == fresh, f.Get("pageNo"))
	}
	if n := e.requests("pos", "getProducts", "session_retry_ok"); n != 1 {
		t.Errorf("requests_total{outcome=session_retry_ok} = %v, want 1", n)
	}
	if n := e.metric("erply_sessiond_proxy_session_retries_total", map[string]string{"credential": "pos"}); n != 1 {
		t.Errorf("session_retries_total = %v, want 1", n)
	}
}

func TestProxyStaleKeyManyCallersOneLogin(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.fake.DeleteSession(e.key("pos"))
	logins := e.fake.Calls("verifyUser")

	const callers = 25
	answers := make([]answer, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() { answers[i], errs[i] = e.call("pos", getProducts) })
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if answers[i].status != http.StatusOK || envelope(t, answers[i]).ResponseStatus != "ok" {
			t.Fatalf("caller %d: %s", i, answers[i])
		}
	}
	if n := e.fake.Calls("verifyUser") - logins; n != 1 {
		t.Errorf("%d callers failing with the same key caused %d logins, want 1", callers, n)
	}
}

func TestProxySecondSessionErrorReturnedAsSent(t *testing.T) {
	e := newEnv(t, envConfig{})
	stale := e.key("pos")
	logins := e.fake.Calls("verifyUser")
	var mu sync.Mutex
	var keys []string
	bodies := []string{
		`{"status":{"request":"getProducts","responseStatus":"error","errorCode":1054},"records":null}`,
		`{"status":{"request":"getProducts","requestUnixTime":1795422000,"responseStatus":"error","errorCode":"1055","generationTime":0.1},"records":null}` + "\n",
	}
	e.fake.SetHandler("getProducts", func(f url.Values) (int, []byte) {
		mu.Lock()
		defer mu.Unlock()
		keys = append(keys, f.Get("sessionKey"))
		return 200, []byte(bodies[len(keys)-1])
	})

	a := e.post("pos", getProducts)
	if a.status != 200 || string(a.body) != bodies[1] {
		t.Fatalf("caller got %s\nwant Erply's second answer as sent:\n%s", a, bodies[1])
	}
	if len(keys) != 2 || keys[0] != stale || keys[1] == stale || keys[1] != e.key("pos") {
		t.Errorf("Erply saw %d calls (first with the old key: %v; second with the new one: %v), want 2",
			len(keys), len(keys) > 0 && keys[0] == stale, len(keys) > 1 && keys[1] == e.key("pos"))
	}
	if n := e.fake.Calls("verifyUser") - logins; n != 1 {
		t.Errorf("%d logins, want 1 (the key was invalidated once)", n)
	}
	// Erply never carried a getProducts out here: its name is no label.
	if n := e.requests("pos", "other", "erply_error"); n != 1 {
		t.Errorf("requests_total{outcome=erply_error} = %v, want 1", n)
	}
}

func TestProxyInvalidateFails(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.fake.DeleteSession(e.key("pos"))
	e.fake.ChangePassword(e.code, "manager@demo.example", "changed-elsewhere-pw")

	a := e.post("pos", getProducts)
	if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" {
		t.Fatalf("answer %s (Retry-After %q)", a, a.header.Get("Retry-After"))
	}
	pe := errorOf(t, a)
	if pe.Error != "no_valid_session" || pe.ErplyCode == nil || *pe.ErplyCode != 1051 {
		t.Errorf("error %+v, want no_valid_session with erplyCode 1051", pe)
	}
	if n := e.fake.Calls("getProducts"); n != 1 {
		t.Errorf("Erply saw %d getProducts calls, want 1", n)
	}
}

func TestProxyRejects(t *testing.T) {
	tests := []struct {
		name        string
		path        string // after the route, e.g. "?x=1"
		contentType string
		body        string
		status      int
		code        string
	}{
		{"query string", "?sessionKey=abc", "application/x-www-form-urlencoded", getProducts, 400, "query_not_allowed"},
		{"empty query string", "?", "application/x-www-form-urlencoded", getProducts, 400, "query_not_allowed"},
		{"caller's sessionKey", "", "application/x-www-form-urlencoded", "request=getProducts&sessionKey=abc", 400, "caller_supplied_session"},
		{"caller's clientCode", "", "application/x-www-form-urlencoded", "clientCode=104729&request=getProducts", 400, "caller_supplied_session"},
		{"empty clientCode", "", "application/x-www-form-urlencoded", "request=getProducts&clientCode=", 400, "caller_supplied_session"},
		{"sessionKey as PHP array", "", "application/x-www-form-urlencoded", "request=getProducts&sessionKey%5B%5D=abc", 400, "caller_supplied_session"},
		{"missing request", "", "application/x-www-form-urlencoded", "pageNo=1", 400, "missing_request"},
		{"empty body", "", "", "", 400, "missing_request"},
		{"malformed form", "", "application/x-www-form-urlencoded", "request=getProducts&name=%zz", 400, "bad_form"},
		{"JSON body", "", "application/json", `{"request":"getProducts"}`, 415, "unsupported_media_type"},
		{"multipart body", "", "multipart/form-data; boundary=x", "--x--", 415, "unsupported_media_type"},
	}
	e := newEnv(t, envConfig{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := e.fake.TotalCalls()
			req, err := http.NewRequest(http.MethodPost, e.url("pos")+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			a, err := e.do(req)
			if err != nil {
				t.Fatal(err)
			}
			wantError(t, a, tc.status, tc.code, "")
			if strings.Contains(string(a.body), "abc") {
				t.Errorf("the answer repeats a form value: %s", a)
			}
			if n := e.fake.TotalCalls() - before; n != 0 {
				t.Errorf("Erply saw %d calls for a rejected request", n)
			}
		})
	}
	t.Run("form without Content-Type is accepted", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, e.url("pos"), strings.NewReader(getProducts))
		a, err := e.do(req)
		if err != nil || a.status != 200 {
			t.Fatalf("answer %v, %v", a, err)
		}
	})
	t.Run("not POST", func(t *testing.T) {
		// The harness mux routes POST only; call the handler directly.
		r := httptest.NewRequest(http.MethodGet, "/v1/sessions/pos/api", nil)
		r.SetPathValue("name", "pos")
		w := httptest.NewRecorder()
		e.proxy.ServeHTTP(w, r)
		if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "POST" {
			t.Errorf("status %d Allow %q", w.Code, w.Header().Get("Allow"))
		}
	})
}

func TestProxyBodyLimit(t *testing.T) {
	body := func(n int) string { return getProducts + "&pad=" + strings.Repeat("x", n-len(getProducts)-5) }
	tests := []struct {
		name    string
		maxBody int64
		size    int
		chunked bool
		status  int
	}{
		{"default limit, 1 MiB + 1", 0, 1<<20 + 1, false, 413},
		{"default limit, 1 MiB + 1, chunked", 0, 1<<20 + 1, true, 413},
		{"1 KiB limit, 1025 bytes", 1024, 1025, false, 413},
		{"1 KiB limit, 1025 bytes, chunked", 1024, 1025, true, 413},
		{"1 KiB limit, 1024 bytes", 1024, 1024, false, 200},
		{"1 KiB limit, 1024 bytes, chunked", 1024, 1024, true, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envConfig{tune: func(o *proxy.Options) { o.MaxBody = tc.maxBody }})
			var r io.Reader = strings.NewReader(body(tc.size))
			if tc.chunked {
				r = io.MultiReader(r) // hides the length: sent chunked
			}
			req, _ := http.NewRequest(http.MethodPost, e.url("pos"), r)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			a, err := e.do(req)
			if err != nil {
				t.Fatal(err)
			}
			if tc.status == 413 {
				wantError(t, a, 413, "body_too_large", "")
				if n := e.fake.Calls("getProducts"); n != 0 {
					t.Errorf("Erply saw %d calls", n)
				}
				return
			}
			if a.status != tc.status {
				t.Fatalf("answer %s", a)
			}
		})
	}
}

func TestProxySessionErrors(t *testing.T) {
	e := newEnv(t, envConfig{bad: true})
	wantError(t, e.post("nosuch", getProducts), 404, "unknown_credential", "")
	a := e.post("bad", getProducts)
	pe := wantError(t, a, 503, "no_valid_session", a.header.Get("Retry-After"))
	if ra, err := strconv.Atoi(a.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("Retry-After %q, want whole seconds >= 1", a.header.Get("Retry-After"))
	}
	if pe.ErplyCode == nil || *pe.ErplyCode != 1051 {
		t.Errorf("erplyCode %v, want 1051 (the login's failure)", pe.ErplyCode)
	}
	if n := e.fake.Calls("getProducts"); n != 0 {
		t.Errorf("Erply saw %d calls", n)
	}
	if n := e.requests("", "other", "rejected"); n != 1 {
		t.Errorf("an unknown name is not counted under credential=\"\" (%v)", n)
	}
	if n := e.requests("bad", "other", "rejected"); n != 1 {
		t.Errorf("requests_total{bad,rejected} = %v", n)
	}
}

func TestProxyUpstreamFailureNotRetried(t *testing.T) {
	tests := []struct {
		name      string
		fault     erplytest.Fault
		status    int
		proxyCode string // "" when Erply's answer is relayed
	}{
		{"connection dropped", erplytest.Fault{Request: "getProducts", Drop: true, Count: 1}, 502, "upstream_unreachable"},
		{"HTTP 503", erplytest.Fault{Request: "getProducts", HTTPStatus: 503, Count: 1}, 503, ""},
		{"maintenance 1000", erplytest.Fault{Request: "getProducts", ErplyCode: 1000, Count: 1}, 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envConfig{})
			logins := e.fake.Calls("verifyUser")
			e.fake.Inject(tc.fault)
			a := e.post("pos", getProducts)
			if tc.proxyCode != "" {
				wantError(t, a, tc.status, tc.proxyCode, "")
				if n := e.requests("pos", "other", "upstream_error"); n != 1 {
					t.Errorf("requests_total{upstream_error} = %v", n)
				}
			} else if a.status != tc.status || strings.Contains(string(a.body), `"error":`) {
				t.Fatalf("answer %s, want Erply's own with status %d", a, tc.status)
			}
			if n := e.fake.Calls("getProducts"); n != 1 {
				t.Errorf("Erply saw %d calls, want 1: no retry", n)
			}
			if n := e.fake.Calls("verifyUser") - logins; n != 0 {
				t.Errorf("%d logins", n)
			}
		})
	}
}

func TestProxyConcurrencyLimit(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.fake.Inject(erplytest.Fault{Request: "getProducts", Latency: 200 * time.Millisecond})
	e.fake.ResetCounters()
	const callers = 11
	answers := make([]answer, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() { answers[i], errs[i] = e.call("pos", getProducts) })
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil || answers[i].status != 200 || envelope(t, answers[i]).ResponseStatus != "ok" {
			t.Fatalf("caller %d: %v %v", i, answers[i], errs[i])
		}
	}
	if n := e.fake.MaxInFlight(); n > proxy.DefaultConcurrency {
		t.Errorf("Erply saw %d requests at once, want at most %d", n, proxy.DefaultConcurrency)
	}
	if n := e.fake.Calls("getProducts"); n != callers {
		t.Errorf("Erply saw %d calls, want %d", n, callers)
	}
}

func TestProxyBusy(t *testing.T) {
	queued := make(chan struct{}, 10)
	e := newEnv(t, envConfig{
		tune:    func(o *proxy.Options) { o.Concurrency = 1; o.QueueWait = 5 * time.Second },
		onQueue: func() { queued <- struct{}{} },
	})
	g := newGate(t)
	e.fake.SetHandler("getProducts", func(url.Values) (int, []byte) {
		g.wait()
		return 200, []byte(`{"status":{"responseStatus":"ok","errorCode":0},"records":[]}`)
	})

	first := make(chan answer, 1)
	go func() { a, _ := e.call("pos", getProducts); first <- a }()
	await(t, g.entered, "the first call to reach Erply") // it holds the only slot

	second := make(chan answer, 1)
	go func() { a, _ := e.call("pos", getProducts); second <- a }()
	await(t, queued, "the second caller to queue")
	e.clk.Advance(5*time.Second - time.Millisecond)
	select {
	case a := <-second:
		t.Fatalf("the second caller gave up before QueueWait: %s", a)
	default:
	}
	e.clk.Advance(time.Millisecond)
	wantError(t, await(t, second, "the second caller's answer"), 503, "proxy_busy", "1")
	if n := e.fake.Calls("getProducts"); n != 1 {
		t.Errorf("Erply saw %d calls, want 1", n)
	}

	g.open()
	if a := await(t, first, "the first caller's answer"); a.status != 200 {
		t.Fatalf("first caller: %s", a)
	}
	// Counted before the first call came back: "other" until Erply has
	// carried a getProducts out.
	if n := e.requests("pos", "other", "busy"); n != 1 {
		t.Errorf("requests_total{busy} = %v", n)
	}
	if a := e.post("pos", getProducts); a.status != 200 {
		t.Fatalf("after the slot freed: %s", a)
	}
}

func TestProxyLimitIsPerClientCode(t *testing.T) {
	e := newEnv(t, envConfig{other: true, tune: func(o *proxy.Options) { o.Concurrency = 1 }})
	g := newGate(t)
	e.fake.SetHandler("getProducts", func(f url.Values) (int, []byte) {
		if f.Get("clientCode") == e.code {
			g.wait()
		}
		return 200, []byte(`{"status":{"responseStatus":"ok","errorCode":0},"records":[]}`)
	})
	first := make(chan answer, 1)
	go func() { a, _ := e.call("pos", getProducts); first <- a }()
	await(t, g.entered, "the first call to reach Erply")

	if a := e.post("other", getProducts); a.status != 200 {
		t.Fatalf("a call for another client code waited behind a full one: %s", a)
	}
	g.open()
	if a := await(t, first, "the first caller's answer"); a.status != 200 {
		t.Fatalf("first caller: %s", a)
	}
}

func TestProxyQuotaPause(t *testing.T) {
	tests := []struct {
		name  string
		setup func(e *env)
		wait  time.Duration // until the hour turns on Erply's clock
	}{
		{"Erply's clock agrees", func(e *env) {
			e.fake.Inject(erplytest.Fault{Request: "getProducts", ErplyCode: 1002, Count: 1})
		}, 40 * time.Minute},
		{"Erply's clock is 30 min ahead", func(e *env) {
			ahead := e.clk.Now().Add(30 * time.Minute).Unix()
			e.fake.SetHandler("getProducts", func(url.Values) (int, []byte) {
				e.fake.SetHandler("getProducts", nil) // once
				return 200, fmt.Appendf(nil, `{"status":{"request":"getProducts","requestUnixTime":"%d","responseStatus":"error","errorCode":1002},"records":null}`, ahead)
			})
		}, 10 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envConfig{other: true})
			tc.setup(e)
			a := e.post("pos", getProducts)
			if a.status != 200 || envelope(t, a).ErrorCode != 1002 {
				t.Fatalf("the triggering caller got %s, want Erply's 1002 answer", a)
			}
			calls := e.fake.Calls("getProducts")

			secs := strconv.Itoa(int(tc.wait / time.Second))
			pe := wantError(t, e.post("pos", getProducts), 503, "erply_quota_exceeded", secs)
			if pe.ErplyCode == nil || *pe.ErplyCode != 1002 {
				t.Errorf("erplyCode %v, want 1002", pe.ErplyCode)
			}
			if a := e.post("other", getProducts); a.status != 200 {
				t.Errorf("another client code was paused too: %s", a)
			}
			e.clk.Advance(tc.wait - time.Second)
			wantError(t, e.post("pos", getProducts), 503, "erply_quota_exceeded", "1")
			if n := e.fake.CallsFor(e.code, "getProducts"); n != calls {
				t.Fatalf("Erply saw %d calls during the pause", n-calls)
			}

			e.clk.Advance(time.Second)
			if a := e.post("pos", getProducts); a.status != 200 || envelope(t, a).ErrorCode != 0 {
				t.Fatalf("after the hour turned: %s", a)
			}
			if n := e.fake.CallsFor(e.code, "getProducts"); n != calls+1 {
				t.Errorf("Erply saw %d calls after the pause, want 1", n-calls)
			}
			// The first paused call came before Erply carried out any
			// getProducts ("other"), the second after other's did.
			if a, b := e.requests("pos", "other", "paused"), e.requests("pos", "getProducts", "paused"); a != 1 || b != 1 {
				t.Errorf("requests_total{paused} = %v as other, %v as getProducts; want 1 and 1", a, b)
			}
			if n := e.metric("erply_sessiond_proxy_paused_seconds_total", map[string]string{"client_code": e.code}); n != tc.wait.Seconds() {
				t.Errorf("paused_seconds_total = %v, want %v", n, tc.wait.Seconds())
			}
		})
	}
}

func TestProxyRateLimitPause(t *testing.T) {
	tests := []struct {
		name       string
		retryAfter time.Duration // sent by Erply with 429
		pause      time.Duration
	}{
		{"no Retry-After", 0, 10 * time.Second},
		{"Retry-After 3", 3 * time.Second, 10 * time.Second},
		{"Retry-After 30", 30 * time.Second, 30 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envConfig{})
			e.fake.Inject(erplytest.Fault{Request: "getProducts", HTTPStatus: 429, RetryAfter: tc.retryAfter, Count: 1})
			a := e.post("pos", getProducts)
			if a.status != 429 || !strings.Contains(string(a.body), "429 Too Many Requests") {
				t.Fatalf("the triggering caller got %s, want Erply's 429", a)
			}
			if want := tc.retryAfter.Seconds(); want > 0 && a.header.Get("Retry-After") != strconv.Itoa(int(want)) {
				t.Errorf("Erply's Retry-After not relayed: %q", a.header.Get("Retry-After"))
			}
			calls := e.fake.Calls("getProducts")

			wantError(t, e.post("pos", getProducts), 503, "erply_rate_limited", strconv.Itoa(int(tc.pause.Seconds())))
			e.clk.Advance(tc.pause - time.Second)
			pe := wantError(t, e.post("pos", getProducts), 503, "erply_rate_limited", "1")
			if pe.ErplyCode != nil {
				t.Errorf("erplyCode %d on an HTTP limit", *pe.ErplyCode)
			}
			if n := e.fake.Calls("getProducts"); n != calls {
				t.Fatalf("Erply saw %d calls during the pause", n-calls)
			}
			e.clk.Advance(time.Second)
			if a := e.post("pos", getProducts); a.status != 200 {
				t.Fatalf("after the pause: %s", a)
			}
			if n := e.metric("erply_sessiond_proxy_paused_seconds_total", map[string]string{"client_code": e.code}); n != tc.pause.Seconds() {
				t.Errorf("paused_seconds_total = %v, want %v", n, tc.pause.Seconds())
			}
		})
	}
}

// A pause set while callers wait in line applies to them when they get a
// slot: they are not sent.
func TestProxyPauseAppliesToQueuedCallers(t *testing.T) {
	queued := make(chan struct{}, 10)
	e := newEnv(t, envConfig{
		tune:    func(o *proxy.Options) { o.Concurrency = 1 },
		onQueue: func() { queued <- struct{}{} },
	})
	g := newGate(t)
	e.fake.SetHandler("getProducts", func(url.Values) (int, []byte) {
		g.wait()
		return 200, []byte(`{"status":{"responseStatus":"error","errorCode":1002},"records":null}`)
	})
	first := make(chan answer, 1)
	go func() { a, _ := e.call("pos", getProducts); first <- a }()
	await(t, g.entered, "the first call to reach Erply")
	second := make(chan answer, 1)
	go func() { a, _ := e.call("pos", getProducts); second <- a }()
	await(t, queued, "the second caller to queue")

	g.open()
	if a := await(t, first, "the first caller's answer"); a.status != 200 || envelope(t, a).ErrorCode != 1002 {
		t.Fatalf("first caller: %s", a)
	}
	wantError(t, await(t, second, "the second caller's answer"), 503, "erply_quota_exceeded", strconv.Itoa(40*60))
	if n := e.fake.Calls("getProducts"); n != 1 {
		t.Errorf("Erply saw %d calls, want 1", n)
	}
}
