package proxy_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/proxy"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// stubSessions serves one credential whose Invalidate replaces the key
// with key+"-new" when the stale key is current (compare-and-refresh).
type stubSessions struct {
	mu          sync.Mutex
	snap        *pool.Snapshot
	invalidated []string
}

var _ proxy.Sessions = (*stubSessions)(nil)

func newStubSessions(apiURL, key string) *stubSessions {
	return &stubSessions{snap: stubSnapshot(apiURL, key)}
}

func stubSnapshot(apiURL, key string) *pool.Snapshot {
	return &pool.Snapshot{Name: "pos", ClientCode: "104729", APIURL: apiURL, State: pool.StateOK,
		Session: &upstream.Session{SessionKey: key}}
}

func (s *stubSessions) Get(context.Context, string) (*pool.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap, nil
}

func (s *stubSessions) Snapshot(name string) (*pool.Snapshot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap, name == s.snap.Name
}

func (s *stubSessions) Invalidate(_ context.Context, _, staleKey string) (*pool.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.invalidated = append(s.invalidated, staleKey)
	if s.snap.Session.SessionKey == staleKey {
		s.snap = stubSnapshot(s.snap.APIURL, staleKey+"-new")
	}
	return s.snap, nil
}

// stubProxy serves a proxy over sessions, with its options tuned, behind
// the route and returns a function that posts form to it.
func stubProxy(t *testing.T, sessions proxy.Sessions, tune ...func(*proxy.Options)) func(form string) answer {
	opts := proxy.Options{Sessions: sessions, Logger: zerolog.New(zerolog.NewTestWriter(t))}
	for _, f := range tune {
		f(&opts)
	}
	px := proxy.New(opts)
	mux := http.NewServeMux()
	mux.Handle("POST /v1/sessions/{name}/api", px)
	srv := httptest.NewServer(mux)
	hc := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	t.Cleanup(func() { hc.CloseIdleConnections(); srv.Close(); px.CloseIdleConnections() })
	e := &env{t: t, base: srv.URL, hc: hc}
	return func(form string) answer { return e.post("pos", form) }
}

func TestProxyRelaysOnlyWhatMatters(t *testing.T) {
	raw := []byte{0x1b, 0x00, 0xff, 'b', 'r', 0x7f, '\n'}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		w.Header().Set("Content-Encoding", "br")
		w.Header().Set("Set-Cookie", "PHPSESSID=upstream")
		w.Header().Set("X-Powered-By", "PHP")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(raw)
	}))
	t.Cleanup(up.Close)
	post := stubProxy(t, newStubSessions(up.URL+"/api/", "k1"))

	a := post(getProducts)
	if a.status != 200 || !bytes.Equal(a.body, raw) {
		t.Fatalf("caller got %d %q, want 200 %q", a.status, a.body, raw)
	}
	if got := a.header.Get("Content-Encoding"); got != "br" {
		t.Errorf("Content-Encoding %q, want br", got)
	}
	if got := a.header.Get("Content-Type"); got != "application/json; charset=UTF-8" {
		t.Errorf("Content-Type %q", got)
	}
	for _, h := range []string{"Set-Cookie", "X-Powered-By"} {
		if a.header.Get(h) != "" {
			t.Errorf("upstream header %s reached the caller", h)
		}
	}
}

// The proxy asks Erply for gzip, reads the status through it, and hands the
// caller the decoded bytes.
func TestProxyGzipReplyAndExactStaleKey(t *testing.T) {
	okBody := `{"status":{"request":"getProducts","responseStatus":"ok","errorCode":0},"records":[{"productID":7}]}`
	var mu sync.Mutex
	var seen []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.URL.RawQuery != "" {
			http.Error(w, "bad", 400)
			return
		}
		mu.Lock()
		seen = append(seen, r.PostForm.Get("sessionKey"))
		mu.Unlock()
		body := okBody
		if r.PostForm.Get("sessionKey") == "k1" {
			body = `{"status":{"request":"getProducts","responseStatus":"error","errorCode":1054},"records":null}`
		}
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			_, _ = zw.Write([]byte(body))
			_ = zw.Close()
			return
		}
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(up.Close)
	sessions := newStubSessions(up.URL+"/api/", "k1")
	post := stubProxy(t, sessions)

	a := post(getProducts)
	if a.status != 200 || string(a.body) != okBody || a.header.Get("Content-Encoding") != "" {
		t.Fatalf("caller got %s (Content-Encoding %q), want the decoded ok reply", a, a.header.Get("Content-Encoding"))
	}
	if len(sessions.invalidated) != 1 || sessions.invalidated[0] != "k1" {
		t.Errorf("Invalidate got %v, want exactly the key Erply refused", sessions.invalidated)
	}
	if len(seen) != 2 || seen[1] != "k1-new" {
		t.Errorf("Erply saw keys %v, want [k1 k1-new]", seen)
	}
}

func TestProxyDoesNotFollowRedirects(t *testing.T) {
	var elsewhere int
	var mu sync.Mutex
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		elsewhere++
		mu.Unlock()
	}))
	t.Cleanup(other.Close)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/steal", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(up.Close)
	post := stubProxy(t, newStubSessions(up.URL+"/api/", "k1"))

	a := post(getProducts)
	if a.status != http.StatusTemporaryRedirect {
		t.Fatalf("caller got %s, want Erply's 307 as sent", a)
	}
	if a.header.Get("Location") != "" {
		t.Error("Location relayed")
	}
	mu.Lock()
	defer mu.Unlock()
	if elsewhere != 0 {
		t.Errorf("the session key was sent to the redirect target %d times", elsewhere)
	}
}

// TestProxySendsThroughTheUpstreamClient: a proxied call leaves through the
// client that logs in, with its User-Agent (the daemon's version), the form
// content type, and the client code and session added to the caller's
// fields.
func TestProxySendsThroughTheUpstreamClient(t *testing.T) {
	type seen struct {
		userAgent, contentType string
		form                   url.Values
	}
	got := make(chan seen, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		got <- seen{r.Header.Get("User-Agent"), r.Header.Get("Content-Type"), r.PostForm}
		_, _ = w.Write([]byte(`{"status":{"responseStatus":"ok","errorCode":0},"records":[]}`))
	}))
	t.Cleanup(up.Close)
	client := upstream.New(upstream.Options{UserAgent: "erply-sessiond/1.2.3"})
	post := stubProxy(t, newStubSessions(up.URL+"/api/", "k1"), func(o *proxy.Options) { o.Upstream = client })

	if a := post(getProducts + "&pageNo=2"); a.status != 200 {
		t.Fatalf("caller got %s, want Erply's 200", a)
	}
	s := await(t, got, "the proxied request")
	if s.userAgent != "erply-sessiond/1.2.3" || s.contentType != "application/x-www-form-urlencoded" {
		t.Errorf("User-Agent %q, Content-Type %q; want the upstream client's", s.userAgent, s.contentType)
	}
	want := url.Values{"request": {"getProducts"}, "pageNo": {"2"}, "clientCode": {"104729"},
		"sessionKey": {"k1"}, "sendContentType": {"1"}}
	if !reflect.DeepEqual(s.form, want) {
		t.Errorf("Erply got %v, want %v", s.form, want)
	}
}

// TestProxyRequestTimeout: an Erply that never answers holds a caller for
// RequestTimeout, then the caller gets 502 upstream_unreachable.
func TestProxyRequestTimeout(t *testing.T) {
	var g *gate
	up := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { g.wait() }))
	t.Cleanup(up.Close)
	g = newGate(t) // opened at cleanup before up.Close, which waits for the handler
	post := stubProxy(t, newStubSessions(up.URL+"/api/", "k1"), func(o *proxy.Options) { o.RequestTimeout = time.Millisecond })

	answers := make(chan answer, 1)
	go func() { answers <- post(getProducts) }()
	a := await(t, answers, "an answer after the request timeout")
	wantError(t, a, http.StatusBadGateway, "upstream_unreachable", "")
}
