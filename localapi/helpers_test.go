package localapi_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/localapi"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// t0 is the fake clock's start.
var t0 = time.Date(2025, 3, 4, 10, 0, 0, 0, time.UTC)

// fakeSessions is a pool stand-in: snapshots set by the test, Get and
// Invalidate scripted through func fields and counted.
type fakeSessions struct {
	GetFunc        func(ctx context.Context, name string) (*pool.Snapshot, error)
	InvalidateFunc func(ctx context.Context, name, staleKey string) (*pool.Snapshot, error)
	// SnapshotsFunc, when set, sees (and may replace) the list Snapshots returns.
	SnapshotsFunc func(list []*pool.Snapshot) []*pool.Snapshot

	gets, invalidates atomic.Int32

	mu    sync.Mutex
	snaps []*pool.Snapshot
	subs  map[int]func(*pool.Snapshot)
	next  int
}

var (
	_ localapi.Sessions = (*fakeSessions)(nil)
	_ localapi.Sessions = (*pool.Pool)(nil) // the real pool fits
)

func newFake(snaps ...*pool.Snapshot) *fakeSessions {
	return &fakeSessions{snaps: snaps, subs: map[int]func(*pool.Snapshot){}}
}

func (f *fakeSessions) Get(ctx context.Context, name string) (*pool.Snapshot, error) {
	f.gets.Add(1)
	if f.GetFunc != nil {
		return f.GetFunc(ctx, name)
	}
	if s := f.snapshot(name); s != nil {
		return s, nil
	}
	return nil, pool.ErrUnknownCredential
}

func (f *fakeSessions) Invalidate(ctx context.Context, name, staleKey string) (*pool.Snapshot, error) {
	f.invalidates.Add(1)
	if f.InvalidateFunc != nil {
		return f.InvalidateFunc(ctx, name, staleKey)
	}
	return nil, errors.New("fake: Invalidate not scripted")
}

func (f *fakeSessions) Snapshots() []*pool.Snapshot {
	f.mu.Lock()
	list := slices.Clone(f.snaps)
	f.mu.Unlock()
	if f.SnapshotsFunc != nil {
		return f.SnapshotsFunc(list)
	}
	return list
}

func (f *fakeSessions) Subscribe(fn func(*pool.Snapshot)) func() {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := f.next
	f.next++
	f.subs[id] = fn
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.subs, id)
	}
}

// fakeMargin is the fake pool's expiry margin for every snapshot.
const fakeMargin = 60 * time.Second

func (f *fakeSessions) MarginOf(*pool.Snapshot) time.Duration { return fakeMargin }

func (f *fakeSessions) snapshot(name string) *pool.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.snaps {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// publish makes s the current snapshot of its credential (dropping it when
// Removed) and tells the subscribers, as the pool does.
func (f *fakeSessions) publish(s *pool.Snapshot) {
	f.mu.Lock()
	i := slices.IndexFunc(f.snaps, func(o *pool.Snapshot) bool { return o.Name == s.Name })
	switch {
	case s.Removed && i >= 0:
		f.snaps = slices.Delete(f.snaps, i, i+1)
	case i >= 0:
		f.snaps[i] = s
	case !s.Removed:
		f.snaps = append(f.snaps, s)
	}
	subs := make([]func(*pool.Snapshot), 0, len(f.subs))
	for _, fn := range f.subs {
		subs = append(subs, fn)
	}
	f.mu.Unlock()
	for _, fn := range subs {
		fn(s)
	}
}

func (f *fakeSessions) subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// snapshot returns a healthy snapshot of credential name with the given key.
func snapshot(name, key string, expires time.Time, version uint64) *pool.Snapshot {
	return &pool.Snapshot{
		Name:       name,
		Kind:       "password",
		ClientCode: "104001",
		APIURL:     "https://104001.erply.com/api/?a=1&b=2",
		Session: &upstream.Session{
			Request:       "verifyUser",
			SessionKey:    key,
			SessionLength: 3600,
			UserID:        6,
			UserName:      "demo",
			EmployeeID:    7,
			EmployeeName:  "Demo <Person>",
			GroupID:       3,
			GroupName:     "admins",
			Token:         "jwt." + key,
			IdentityToken: "idt." + key,
		},
		ExpiresAt: expires,
		State:     pool.StateOK,
		Version:   version,
	}
}

// harness is a Server on a real Unix socket in a short temporary directory.
type harness struct {
	t      testing.TB
	fake   *fakeSessions
	clk    *clock.Fake
	reg    *prometheus.Registry
	srv    *localapi.Server
	dir    string
	sock   string
	client *http.Client
	tcp    string // host:port of the TCP listener, when started
}

type setup struct {
	opts func(*localapi.Options)
	tcp  bool
	log  io.Writer // debug log destination; the test log when nil
}

func shortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func start(t testing.TB, fake *fakeSessions, su setup) *harness {
	t.Helper()
	h := &harness{t: t, fake: fake, clk: clock.NewFake(t0), reg: prometheus.NewRegistry(), dir: shortDir(t)}
	h.sock = filepath.Join(h.dir, "s.sock")
	var w io.Writer = zerolog.NewTestWriter(t)
	if su.log != nil {
		w = su.log
	}
	opts := localapi.Options{
		Sessions:   fake,
		Clock:      h.clk,
		Logger:     zerolog.New(w).Level(zerolog.DebugLevel),
		Registerer: h.reg,
		Gatherer:   h.reg,
	}
	if su.opts != nil {
		su.opts(&opts)
	}
	h.srv = localapi.New(opts)

	l, err := localapi.ListenUnix(h.sock, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	serving := 1
	go func() { done <- h.srv.Serve(l, false) }()
	if su.tcp {
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		h.tcp = tl.Addr().String()
		serving++
		go func() { done <- h.srv.Serve(tl, true) }()
	}
	h.client = unixClient(h.sock)
	t.Cleanup(func() {
		h.client.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		for range serving {
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		}
	})
	return h
}

func unixClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// response is what a test looks at.
type response struct {
	status int
	header http.Header
	body   string
}

func (h *harness) do(method, path string, body io.Reader, hdr ...string) response {
	h.t.Helper()
	return h.doWith(h.client, "http://sessiond", method, path, body, hdr...)
}

func (h *harness) doTCP(method, path string, hdr ...string) response {
	h.t.Helper()
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	return h.doWith(c, "http://"+h.tcp, method, path, nil, hdr...)
}

func (h *harness) doWith(c *http.Client, base, method, path string, body io.Reader, hdr ...string) response {
	h.t.Helper()
	req, err := http.NewRequest(method, base+path, body)
	if err != nil {
		h.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: string(b)}
}

func (h *harness) get(path string) response {
	h.t.Helper()
	return h.do(http.MethodGet, path, nil)
}

func (h *harness) postForm(path, form string) response {
	h.t.Helper()
	return h.do(http.MethodPost, path, strings.NewReader(form))
}

// expect checks status, content type and the exact body.
func expect(t *testing.T, got response, status int, contentType, body string) {
	t.Helper()
	if got.status != status {
		t.Errorf("status = %d, want %d (body %q)", got.status, status, got.body)
	}
	if ct := got.header.Get("Content-Type"); ct != contentType {
		t.Errorf("Content-Type = %q, want %q", ct, contentType)
	}
	if got.body != body {
		t.Errorf("body =\n%s\nwant\n%s", got.body, body)
	}
}

const (
	jsonType = "application/json"
	textType = "text/plain; charset=utf-8"
)

// lineWriter hands each log line to a channel, so a test can wait for one.
type lineWriter struct{ lines chan []byte }

func (w lineWriter) Write(p []byte) (int, error) {
	w.lines <- bytes.Clone(p)
	return len(p), nil
}
