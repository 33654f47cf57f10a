package faultproxy_test

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/internal/faultproxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// reply is what the backend answers: valid JSON of a few hundred bytes.
var reply = `{"status":{"responseStatus":"ok","errorCode":0},"records":[{"sessionKey":"` +
	strings.Repeat("k", 300) + `"}]}`

type env struct {
	t       *testing.T
	backend *httptest.Server
	proxy   *faultproxy.Proxy
	client  *http.Client
	hits    chan string
}

func newEnv(t *testing.T, opts faultproxy.Options) *env {
	t.Helper()
	e := &env{t: t, hits: make(chan string, 100)}
	e.backend = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		e.hits <- r.Method + " " + r.URL.Path + " " + string(b)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, reply)
	}))
	t.Cleanup(e.backend.Close)
	p, err := faultproxy.New(e.backend.URL, opts)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy = p
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	e.client = &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	t.Cleanup(e.client.CloseIdleConnections)
	return e
}

// post sends a form to the proxy and returns the body read, or the error.
func (e *env) post(c *http.Client) (int, string, error) {
	resp, err := c.Post(e.proxy.URL()+"/104729/api/", "application/x-www-form-urlencoded", strings.NewReader("request=verifyUser"))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestPassForwardsUnchanged(t *testing.T) {
	e := newEnv(t, faultproxy.Options{})
	for i := range 3 {
		status, body, err := e.post(e.client)
		if err != nil || status != 200 || body != reply {
			t.Fatalf("request %d: %d %q %v", i, status, body, err)
		}
		if got := <-e.hits; got != "POST /104729/api/ request=verifyUser" {
			t.Fatalf("backend saw %q", got)
		}
	}
	if e.proxy.Requests() != 3 || e.proxy.Forwarded() != 3 {
		t.Errorf("requests %d forwarded %d, want 3 and 3", e.proxy.Requests(), e.proxy.Forwarded())
	}
	if e.proxy.Connections() != 1 {
		t.Errorf("connections = %d, want 1 (keep-alive through the proxy)", e.proxy.Connections())
	}
}

func TestModes(t *testing.T) {
	tests := []struct {
		mode faultproxy.Mode
		// check judges what the client saw.
		check     func(t *testing.T, status int, body string, err error, took time.Duration)
		forwarded bool
	}{
		{faultproxy.Reset, func(t *testing.T, _ int, _ string, err error, _ time.Duration) {
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
				t.Errorf("err = %v, want a connection reset", err)
			}
		}, false},
		{faultproxy.HalfOpen, func(t *testing.T, _ int, _ string, err error, took time.Duration) {
			var ne interface{ Timeout() bool }
			if !errors.As(err, &ne) || !ne.Timeout() || took < 200*time.Millisecond {
				t.Errorf("err = %v after %v, want the client's 200ms timeout", err, took)
			}
		}, false},
		{faultproxy.Slow, func(t *testing.T, status int, body string, err error, took time.Duration) {
			// len(reply) bytes, 64 at a time, 5ms apart.
			if err != nil || status != 200 || body != reply {
				t.Errorf("got %d %q %v, want the whole reply", status, body, err)
			}
			if min := time.Duration(len(reply)/64) * 5 * time.Millisecond; took < min {
				t.Errorf("took %v, want at least %v", took, min)
			}
		}, true},
		{faultproxy.Truncate, func(t *testing.T, status int, body string, err error, _ time.Duration) {
			var v any
			if err != nil || status != 200 || body != reply[:len(reply)/2] || json.Unmarshal([]byte(body), &v) == nil {
				t.Errorf("got %d %q %v, want the first half of the reply, not valid JSON", status, body, err)
			}
		}, true},
		{faultproxy.ResetMidBody, func(t *testing.T, status int, body string, err error, _ time.Duration) {
			if status != 200 || err == nil || len(body) >= len(reply) {
				t.Errorf("got %d, %d bytes, %v; want a 200 whose body breaks off", status, len(body), err)
			}
		}, true},
		{faultproxy.Garbage, func(t *testing.T, _ int, _ string, err error, _ time.Duration) {
			if err == nil || !strings.Contains(err.Error(), "malformed HTTP") {
				t.Errorf("err = %v, want a malformed HTTP response", err)
			}
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.mode.String(), func(t *testing.T) {
			e := newEnv(t, faultproxy.Options{TrickleBytes: 64, TrickleInterval: 5 * time.Millisecond})
			// One good request on a kept-alive connection, then the fault on it.
			if _, body, err := e.post(e.client); err != nil || body != reply {
				t.Fatalf("before the fault: %q %v", body, err)
			}
			<-e.hits
			e.proxy.SetMode(tc.mode)
			if e.proxy.Mode() != tc.mode {
				t.Fatalf("Mode = %v", e.proxy.Mode())
			}
			c := &http.Client{Transport: e.client.Transport, Timeout: 200 * time.Millisecond}
			if tc.mode == faultproxy.Slow {
				c.Timeout = 5 * time.Second
			}
			start := time.Now()
			status, body, err := e.post(c)
			tc.check(t, status, body, err, time.Since(start))
			if got := e.proxy.Forwarded(); (got == 2) != tc.forwarded {
				t.Errorf("forwarded = %d; the fault request forwarded: want %v", got, tc.forwarded)
			}
			if e.proxy.Requests() != 2 {
				t.Errorf("requests = %d, want 2", e.proxy.Requests())
			}
			// The fault clears: requests go through again.
			e.proxy.SetMode(faultproxy.Pass)
			e.client.CloseIdleConnections()
			if _, body, err := e.post(e.client); err != nil || body != reply {
				t.Fatalf("after the fault: %q %v", body, err)
			}
		})
	}
}

// A connection held half-open and a slow reply in progress end when the
// proxy closes, so Close never waits on a client.
func TestCloseEndsHeldConnections(t *testing.T) {
	for _, mode := range []faultproxy.Mode{faultproxy.HalfOpen, faultproxy.Slow} {
		t.Run(mode.String(), func(t *testing.T) {
			seen := make(chan faultproxy.Request, 1)
			e := newEnv(t, faultproxy.Options{TrickleBytes: 1, TrickleInterval: time.Hour,
				OnRequest: func(r faultproxy.Request) { seen <- r }})
			e.proxy.SetMode(mode)
			errc := make(chan error, 1)
			go func() {
				_, _, err := e.post(e.client)
				errc <- err
			}()
			// Wait until the proxy has the request, then close under it.
			select {
			case r := <-seen:
				want := faultproxy.Request{Mode: mode, Method: "POST", Path: "/104729/api/", Body: []byte("request=verifyUser")}
				if r.Mode != want.Mode || r.Method != want.Method || r.Path != want.Path || string(r.Body) != string(want.Body) {
					t.Fatalf("OnRequest got %+v, want %+v", r, want)
				}
			case err := <-errc:
				t.Fatalf("request ended before the proxy read it: %v", err)
			}
			closed := make(chan struct{})
			go func() { e.proxy.Close(); close(closed) }()
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not return while a connection was held")
			}
			if err := <-errc; err == nil {
				t.Fatal("the held request succeeded")
			}
		})
	}
}

func TestGarbageIsReproducible(t *testing.T) {
	read := func() []byte {
		e := newEnv(t, faultproxy.Options{GarbageBytes: 64})
		e.proxy.SetMode(faultproxy.Garbage)
		c, err := net.Dial("tcp", e.proxy.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
		b, err := io.ReadAll(c)
		if err != nil || len(b) != 64 {
			t.Fatalf("read %d bytes, %v", len(b), err)
		}
		return b
	}
	a, b := read(), read()
	if string(a) != string(b) {
		t.Fatal("two proxies with the default seed sent different garbage")
	}
	if strings.HasPrefix(string(a), "HTTP/") {
		t.Fatal("garbage looks like HTTP")
	}
}
