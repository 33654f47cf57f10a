package localapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/localapi"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

func sessionJSON(key string, expiresAt time.Time, expiresIn int) string {
	return fmt.Sprintf(`{"name":"pos","clientCode":"104001","apiURL":"https://104001.erply.com/api/?a=1&b=2",`+
		`"sessionKey":%q,"expiresAt":%q,"expiresIn":%d,"userID":6,"userName":"demo","employeeID":7,`+
		`"employeeName":"Demo <Person>","groupID":3,"groupName":"admins","token":"jwt.%s","identityToken":"idt.%s","passwordExpired":false}`+"\n",
		key, expiresAt.UTC().Format(time.RFC3339), expiresIn, key, key)
}

func TestSessionRoutes(t *testing.T) {
	exp := t0.Add(time.Hour)
	noTokens := snapshot("bare", "KEYB", exp, 1)
	noTokens.Session.Token, noTokens.Session.IdentityToken = "", ""
	fake := newFake(snapshot("pos", "KEY1", exp, 1), noTokens)
	h := start(t, fake, setup{})

	tests := []struct {
		name, path  string
		status      int
		contentType string
		body        string
	}{
		{"session", "/v1/sessions/pos", 200, jsonType, sessionJSON("KEY1", exp, 3600)},
		{"key", "/v1/sessions/pos/key", 200, textType, "KEY1\n"},
		{"jwt", "/v1/sessions/pos/jwt", 200, textType, "jwt.KEY1\n"},
		{"identity token", "/v1/sessions/pos/identity-token", 200, textType, "idt.KEY1\n"},
		{"no jwt", "/v1/sessions/bare/jwt", 404, textType, "error: the session has no Erply JWT\n"},
		{"no identity token", "/v1/sessions/bare/identity-token", 404, textType, "error: the session has no identity token\n"},
		{"unknown credential, JSON", "/v1/sessions/nope", 404, jsonType,
			`{"error":"unknown_credential","message":"unknown credential"}` + "\n"},
		{"unknown credential, text", "/v1/sessions/nope/key", 404, textType, "error: unknown credential\n"},
		{"upper-case name", "/v1/sessions/POS/key", 404, textType, "error: unknown credential\n"},
		{"name too long", "/v1/sessions/" + strings.Repeat("a", 65) + "/key", 404, textType, "error: unknown credential\n"},
		{"unknown path", "/v1/nothing", 404, jsonType, `{"error":"not_found","message":"no such route"}` + "\n"},
		{"trailing slash", "/v1/sessions/", 404, jsonType, `{"error":"not_found","message":"no such route"}` + "\n"},
		{"healthz", "/healthz", 200, textType, "ok\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			expect(t, h.get(tc.path), tc.status, tc.contentType, tc.body)
		})
	}
	if n := fake.gets.Load(); n != 0 {
		t.Errorf("pool Get called %d times; valid pre-rendered sessions and bad names must not reach it", n)
	}

	t.Run("expiresIn follows the clock", func(t *testing.T) {
		h.clk.Advance(10*time.Second + 500*time.Millisecond)
		expect(t, h.get("/v1/sessions/pos"), 200, jsonType, sessionJSON("KEY1", exp, 3589))
	})
	t.Run("wrong method", func(t *testing.T) {
		got := h.do(http.MethodDelete, "/v1/sessions/pos/key", nil)
		expect(t, got, 405, jsonType, `{"error":"method_not_allowed","message":"method not allowed on this route"}`+"\n")
		if allow := got.header.Get("Allow"); !strings.Contains(allow, "GET") {
			t.Errorf("Allow = %q, want GET listed", allow)
		}
	})
}

func TestUnavailable(t *testing.T) {
	refused := &upstream.Error{Request: "verifyUser", Code: upstream.CodeLoginFailed}
	tests := []struct {
		name       string
		err        error
		retryAfter string
		json       string
		text       string
	}{
		{"login refused", &pool.UnavailableError{Name: "pos", Reason: refused, RetryAfter: 1500 * time.Millisecond}, "2",
			`{"error":"no_valid_session","message":"credential pos: no valid session: erply verifyUser: error 1051 (login refused)","erplyCode":1051}`,
			"error: credential pos: no valid session: erply verifyUser: error 1051 (login refused)\n"},
		{"no reason, no wait", &pool.UnavailableError{Name: "pos"}, "1",
			`{"error":"no_valid_session","message":"credential pos: no valid session"}`,
			"error: credential pos: no valid session\n"},
		{"waited too long", fmt.Errorf("login: %w", context.DeadlineExceeded), "1",
			`{"error":"no_valid_session","message":"no valid session yet: gave up waiting for the login"}`,
			"error: no valid session yet: gave up waiting for the login\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake(snapshot("pos", "OLD", t0.Add(30*time.Second), 1)) // inside the margin
			var deadline atomic.Value
			fake.GetFunc = func(ctx context.Context, name string) (*pool.Snapshot, error) {
				d, ok := ctx.Deadline()
				deadline.Store(ok && time.Until(d) <= localapi.LoginWait)
				return nil, tc.err
			}
			h := start(t, fake, setup{})
			for _, route := range []struct{ path, ct, body string }{
				{"/v1/sessions/pos", jsonType, tc.json + "\n"},
				{"/v1/sessions/pos/key", textType, tc.text},
			} {
				got := h.get(route.path)
				expect(t, got, 503, route.ct, route.body)
				if ra := got.header.Get("Retry-After"); ra != tc.retryAfter {
					t.Errorf("%s: Retry-After = %q, want %q", route.path, ra, tc.retryAfter)
				}
			}
			if bounded, _ := deadline.Load().(bool); !bounded {
				t.Error("Get was called without a deadline of at most LoginWait")
			}
		})
	}
}

func TestHotPathFallsBackInsideMargin(t *testing.T) {
	fake := newFake(snapshot("pos", "OLD", t0.Add(2*time.Minute), 1))
	fresh := snapshot("pos", "NEW", t0.Add(time.Hour), 2)
	fake.GetFunc = func(context.Context, string) (*pool.Snapshot, error) { return fresh, nil }
	h := start(t, fake, setup{})

	expect(t, h.get("/v1/sessions/pos/key"), 200, textType, "OLD\n")
	if n := fake.gets.Load(); n != 0 {
		t.Fatalf("Get called %d times while the pre-rendered key was valid", n)
	}
	// 61 s later the key has 59 s left, inside the 60 s margin: never served.
	h.clk.Advance(61 * time.Second)
	expect(t, h.get("/v1/sessions/pos/key"), 200, textType, "NEW\n")
	expect(t, h.get("/v1/sessions/pos"), 200, jsonType, sessionJSON("NEW", fresh.ExpiresAt, 3539))
	if n := fake.gets.Load(); n != 2 {
		t.Errorf("Get called %d times, want 2 (once per request inside the margin)", n)
	}

	// The pool publishes the refreshed snapshot: served from memory again.
	fake.publish(fresh)
	expect(t, h.get("/v1/sessions/pos/key"), 200, textType, "NEW\n")
	if n := fake.gets.Load(); n != 2 {
		t.Errorf("Get called %d times after the new snapshot was published, want still 2", n)
	}

	// A credential dropped by a reload is gone at once.
	removed := *fresh
	removed.Removed, removed.Version = true, 3
	fake.publish(&removed)
	expect(t, h.get("/v1/sessions/pos/key"), 404, textType, "error: unknown credential\n")
}

// marginSessions is a pool whose margin is 10 s, as *pool.Pool states for
// a 60 s session (a sixth of its lifetime).
type marginSessions struct{ *fakeSessions }

func (marginSessions) MarginOf(*pool.Snapshot) time.Duration { return 10 * time.Second }

func TestMarginComesFromSessions(t *testing.T) {
	fake := newFake(snapshot("pos", "SHORT", t0.Add(60*time.Second), 1))
	h := start(t, fake, setup{opts: func(o *localapi.Options) { o.Sessions = marginSessions{fake} }})
	h.clk.Advance(45 * time.Second)
	expect(t, h.get("/v1/sessions/pos/key"), 200, textType, "SHORT\n")
	if n := fake.gets.Load(); n != 0 {
		t.Errorf("Get called %d times, want 0: 15 s left is outside a 10 s margin", n)
	}
	h.clk.Advance(6 * time.Second)
	h.get("/v1/sessions/pos/key")
	if n := fake.gets.Load(); n != 1 {
		t.Errorf("Get called %d times, want 1: 9 s left is inside a 10 s margin", n)
	}
}

func TestInvalidate(t *testing.T) {
	exp := t0.Add(time.Hour)
	fake := newFake(snapshot("pos", "OLD", exp, 1))
	fresh := snapshot("pos", "NEW", exp.Add(time.Minute), 2)
	var gotKey atomic.Value
	fake.InvalidateFunc = func(ctx context.Context, name, stale string) (*pool.Snapshot, error) {
		gotKey.Store(name + "/" + stale)
		if d, ok := ctx.Deadline(); !ok || time.Until(d) > localapi.LoginWait {
			t.Error("Invalidate called without a deadline of at most LoginWait")
		}
		return fresh, nil
	}
	h := start(t, fake, setup{})

	t.Run("form body", func(t *testing.T) {
		expect(t, h.postForm("/v1/sessions/pos/invalidate", "key=OLD"), 200, jsonType,
			sessionJSON("NEW", fresh.ExpiresAt, 3660))
		if k := gotKey.Load(); k != "pos/OLD" {
			t.Errorf("Invalidate got %v, want pos/OLD", k)
		}
	})
	t.Run("query", func(t *testing.T) {
		expect(t, h.do(http.MethodPost, "/v1/sessions/pos/invalidate?key=Q%2BK", nil), 200, jsonType,
			sessionJSON("NEW", fresh.ExpiresAt, 3660))
		if k := gotKey.Load(); k != "pos/Q+K" {
			t.Errorf("Invalidate got %v, want pos/Q+K", k)
		}
	})
	t.Run("missing key", func(t *testing.T) {
		expect(t, h.postForm("/v1/sessions/pos/invalidate", "other=1"), 400, jsonType,
			`{"error":"missing_key","message":"form or query field key (the stale session key) is required"}`+"\n")
	})
	t.Run("unknown credential", func(t *testing.T) {
		expect(t, h.postForm("/v1/sessions/nope/invalidate", "key=OLD"), 404, jsonType,
			`{"error":"unknown_credential","message":"unknown credential"}`+"\n")
	})
	t.Run("body too large", func(t *testing.T) {
		body := "key=OLD&pad=" + strings.Repeat("x", localapi.MaxBodyBytes)
		expect(t, h.postForm("/v1/sessions/pos/invalidate", body), 413, jsonType,
			`{"error":"body_too_large","message":"request body larger than 65536 bytes"}`+"\n")
	})
	t.Run("GET is not allowed", func(t *testing.T) {
		got := h.get("/v1/sessions/pos/invalidate")
		if got.status != 405 || got.header.Get("Allow") != "POST" {
			t.Errorf("GET invalidate: %d Allow=%q, want 405 Allow=POST", got.status, got.header.Get("Allow"))
		}
	})
	if n := fake.invalidates.Load(); n != 2 {
		t.Errorf("Invalidate called %d times, want 2", n)
	}
}

func TestInvalidateUnavailable(t *testing.T) {
	fake := newFake(snapshot("pos", "OLD", t0.Add(time.Hour), 1))
	fake.InvalidateFunc = func(context.Context, string, string) (*pool.Snapshot, error) {
		return nil, &pool.UnavailableError{Name: "pos", Reason: &upstream.Error{Request: "verifyUser", Code: upstream.CodeQuotaExceeded}, RetryAfter: 20*time.Minute + time.Millisecond}
	}
	h := start(t, fake, setup{})
	got := h.postForm("/v1/sessions/pos/invalidate", "key=OLD")
	expect(t, got, 503, jsonType, `{"error":"no_valid_session","message":"credential pos: no valid session: erply verifyUser: error 1002 (hourly request quota exceeded)","erplyCode":1002}`+"\n")
	if ra := got.header.Get("Retry-After"); ra != "1201" {
		t.Errorf("Retry-After = %q, want 1201", ra)
	}
}

func TestSessionList(t *testing.T) {
	failing := snapshot("pos", "K", t0.Add(time.Hour), 4)
	failing.State = pool.StateFailing
	failing.LastError = &upstream.Error{Request: "verifyUser", Code: upstream.CodeMaintenance}
	failing.RefreshAt = t0.Add(90 * time.Second)
	failing.Logins = 3
	starting := &pool.Snapshot{Name: "back_office", Kind: "pin", ClientCode: "104001", State: pool.StateStarting}
	late := snapshot("late", "L", t0.Add(-time.Second), 2) // the pool has not noticed yet
	late.Session.PasswordExpired = true
	private := snapshot("private", "P", t0.Add(time.Hour), 1)
	private.AllowUIDs = []uint32{4242}
	fake := newFake(failing, starting, late, private)
	h := start(t, fake, setup{opts: func(o *localapi.Options) {
		o.PeerCred = func(net.Conn) (uint32, uint32, uint32, bool) { return 1000, 1000, 1, true }
	}})
	want := `[{"name":"pos","kind":"password","clientCode":"104001","state":"failing","expiresAt":"2025-03-04T11:00:00Z","refreshAt":"2025-03-04T10:01:30Z","logins":3,"lastError":"erply verifyUser: error 1000 (API under maintenance)","passwordExpired":false},` +
		`{"name":"back_office","kind":"pin","clientCode":"104001","state":"starting","expiresAt":null,"refreshAt":null,"logins":0,"lastError":"","passwordExpired":false},` +
		`{"name":"late","kind":"password","clientCode":"104001","state":"expired","expiresAt":"2025-03-04T09:59:59Z","refreshAt":null,"logins":0,"lastError":"","passwordExpired":true}]` + "\n"
	expect(t, h.get("/v1/sessions"), 200, jsonType, want)
	if strings.Contains(h.get("/v1/sessions").body, `"K`) {
		t.Error("the list leaks a session key")
	}
}

func TestAccessControl(t *testing.T) {
	uidOnly := snapshot("pos", "K1", t0.Add(time.Hour), 1)
	uidOnly.AllowUIDs = []uint32{1000}
	gidOnly := snapshot("shop", "K2", t0.Add(time.Hour), 1)
	gidOnly.AllowGIDs = []uint32{50}
	open := snapshot("open", "K3", t0.Add(time.Hour), 1)
	expired := snapshot("old", "K4", t0.Add(-time.Hour), 1)
	expired.AllowUIDs = []uint32{1000}

	type peer struct {
		uid, gid uint32
		ok       bool
	}
	tests := []struct {
		name   string
		peer   peer
		path   string
		status int
		body   string
	}{
		{"listed uid", peer{1000, 1000, true}, "/v1/sessions/pos/key", 200, "K1\n"},
		{"other uid", peer{1001, 1001, true}, "/v1/sessions/pos/key", 403, "error: uid 1001 may not read this credential\n"},
		{"listed gid", peer{1001, 50, true}, "/v1/sessions/shop/key", 200, "K2\n"},
		{"other gid", peer{1001, 51, true}, "/v1/sessions/shop/key", 403, "error: uid 1001 may not read this credential\n"},
		{"root", peer{0, 0, true}, "/v1/sessions/pos/key", 200, "K1\n"},
		{"unknown peer, restricted", peer{0, 0, false}, "/v1/sessions/pos/key", 403, "error: caller may not read this credential\n"},
		{"unknown peer, open", peer{0, 0, false}, "/v1/sessions/open/key", 200, "K3\n"},
		{"anyone, open", peer{1234, 1234, true}, "/v1/sessions/open/key", 200, "K3\n"},
		{"refused before any login", peer{1001, 1001, true}, "/v1/sessions/old/key", 403, "error: uid 1001 may not read this credential\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake(uidOnly, gidOnly, open, expired)
			h := start(t, fake, setup{opts: func(o *localapi.Options) {
				o.PeerCred = func(net.Conn) (uint32, uint32, uint32, bool) { return tc.peer.uid, tc.peer.gid, 99, tc.peer.ok }
			}})
			expect(t, h.get(tc.path), tc.status, textType, tc.body)
			if n := fake.gets.Load(); n != 0 {
				t.Errorf("Get called %d times", n)
			}
		})
	}

	t.Run("forbidden JSON and invalidate", func(t *testing.T) {
		fake := newFake(uidOnly)
		h := start(t, fake, setup{opts: func(o *localapi.Options) {
			o.PeerCred = func(net.Conn) (uint32, uint32, uint32, bool) { return 7, 7, 1, true }
		}})
		want := `{"error":"forbidden","message":"uid 7 may not read this credential"}` + "\n"
		expect(t, h.get("/v1/sessions/pos"), 403, jsonType, want)
		expect(t, h.postForm("/v1/sessions/pos/invalidate", "key=K1"), 403, jsonType, want)
		expect(t, h.get("/v1/sessions"), 200, jsonType, "[]\n")
		if n := fake.invalidates.Load(); n != 0 {
			t.Errorf("Invalidate called %d times for a forbidden caller", n)
		}
	})
}

func TestPeerCredFromSocket(t *testing.T) {
	lines := lineWriter{make(chan []byte, 64)}
	fake := newFake(snapshot("pos", "K1", t0.Add(time.Hour), 1))
	h := start(t, fake, setup{log: lines})
	expect(t, h.get("/v1/sessions/pos/key"), 200, textType, "K1\n")
	for {
		select {
		case l := <-lines.lines:
			var entry struct {
				Message, Route string
				Status         int
				UID, PID       *int
			}
			if err := json.Unmarshal(l, &entry); err != nil {
				t.Fatalf("log line %q: %v", l, err)
			}
			if entry.Message != "request" {
				continue
			}
			if entry.Route != "GET /v1/sessions/{name}/key" || entry.Status != 200 {
				t.Errorf("logged route %q status %d", entry.Route, entry.Status)
			}
			if entry.UID == nil || *entry.UID != os.Getuid() || entry.PID == nil || *entry.PID != os.Getpid() {
				t.Errorf("logged uid/pid from SO_PEERCRED = %v/%v, want %d/%d", entry.UID, entry.PID, os.Getuid(), os.Getpid())
			}
			if bytes.Contains(l, []byte("K1")) {
				t.Errorf("the request log shows the key: %s", l)
			}
			return
		case <-time.After(5 * time.Second):
			t.Fatal("no request log line")
		}
	}
}

func TestTCPRules(t *testing.T) {
	for _, enabled := range []bool{false, true} {
		t.Run("sessions "+strconv.FormatBool(enabled), func(t *testing.T) {
			fake := newFake(snapshot("pos", "K1", t0.Add(time.Hour), 1))
			h := start(t, fake, setup{tcp: true, opts: func(o *localapi.Options) {
				o.TCPSessions = enabled
				o.PeerCred = func(net.Conn) (uint32, uint32, uint32, bool) {
					t.Error("PeerCred called for a TCP connection")
					return 0, 0, 0, false
				}
			}})
			expect(t, h.doTCP("GET", "/healthz"), 200, textType, "ok\n")
			if got := h.doTCP("GET", "/readyz"); got.status != 200 {
				t.Errorf("readyz on TCP: %d", got.status)
			}
			if got := h.doTCP("GET", "/metrics"); got.status != 200 || !strings.Contains(got.body, "erply_sessiond_session_expiry_timestamp_seconds") {
				t.Errorf("metrics on TCP: %d", got.status)
			}
			noHeader := h.doTCP("GET", "/v1/sessions/pos/key")
			withHeader := h.doTCP("GET", "/v1/sessions/pos/key", localapi.RequestHeader, "1")
			wrongValue := h.doTCP("GET", "/v1/sessions/pos", localapi.RequestHeader, "true")
			if !enabled {
				expect(t, noHeader, 404, textType, "error: session routes are not served on the TCP listener\n")
				expect(t, withHeader, 404, textType, "error: session routes are not served on the TCP listener\n")
				expect(t, wrongValue, 404, jsonType, `{"error":"not_found","message":"session routes are not served on the TCP listener"}`+"\n")
				return
			}
			expect(t, noHeader, 412, textType, "error: session routes on TCP require the header X-Sessiond-Request: 1\n")
			expect(t, withHeader, 200, textType, "K1\n")
			expect(t, wrongValue, 412, jsonType, `{"error":"missing_header","message":"session routes on TCP require the header X-Sessiond-Request: 1"}`+"\n")
		})
	}
}

func TestListenUnix(t *testing.T) {
	t.Run("stale socket is replaced", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "s.sock")
		old, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		old.(*net.UnixListener).SetUnlinkOnClose(false)
		old.Close() // leaves the file behind, as a crash does
		l, err := localapi.ListenUnix(path, 0o660)
		if err != nil {
			t.Fatalf("ListenUnix over a stale socket: %v", err)
		}
		l.Close()
	})
	t.Run("live socket is refused", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "s.sock")
		live, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		_, err = localapi.ListenUnix(path, 0o660)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Fatalf("ListenUnix over a live socket: %v, want an error naming %s", err, path)
		}
	})
	t.Run("regular file is refused", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "s.sock")
		if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := localapi.ListenUnix(path, 0o660)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("ListenUnix over a file: %v, want an error naming %s", err, path)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
			t.Errorf("the file was touched: %q, %v", b, err)
		}
	})
	for _, mode := range []os.FileMode{0o600, 0o660, 0o666} {
		t.Run("mode "+strconv.FormatUint(uint64(mode), 8), func(t *testing.T) {
			path := filepath.Join(shortDir(t), "s.sock")
			l, err := localapi.ListenUnix(path, mode)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != mode {
				t.Errorf("socket mode = %v, want socket %v", fi.Mode(), mode)
			}
		})
	}
}

func TestShutdown(t *testing.T) {
	fake := newFake(snapshot("pos", "OLD", t0.Add(10*time.Second), 1))
	entered, release := make(chan struct{}), make(chan struct{})
	fake.GetFunc = func(ctx context.Context, name string) (*pool.Snapshot, error) {
		close(entered)
		<-release
		return snapshot("pos", "NEW", t0.Add(time.Hour), 2), nil
	}
	dir := shortDir(t)
	sock := filepath.Join(dir, "s.sock")
	srv := localapi.New(localapi.Options{Sessions: fake, Clock: clock.NewFake(t0)})
	if fake.subscribers() != 1 {
		t.Fatalf("New left %d subscriptions, want 1", fake.subscribers())
	}
	l, err := localapi.ListenUnix(sock, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l, false) }()

	client := unixClient(sock)
	defer client.CloseIdleConnections()
	answer := make(chan string, 1)
	go func() {
		res, err := client.Get("http://sessiond/v1/sessions/pos/key")
		if err != nil {
			answer <- err.Error()
			return
		}
		defer res.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(res.Body)
		answer <- strconv.Itoa(res.StatusCode) + " " + b.String()
	}()
	<-entered // the request is in flight, waiting for a login

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- srv.Shutdown(ctx)
	}()
	// Shutdown waits for the request in flight: it must not return yet.
	select {
	case err := <-stopped:
		t.Fatalf("Shutdown returned (%v) while a request was in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if got := <-answer; got != "200 NEW\n" {
		t.Errorf("in-flight request got %q, want 200 NEW", got)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve after Shutdown: %v, want nil", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still present after Shutdown: %v", err)
	}
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		t.Error("a connection was accepted after Shutdown")
	}
	if fake.subscribers() != 0 {
		t.Errorf("Shutdown left %d subscriptions", fake.subscribers())
	}
}

func TestReadyz(t *testing.T) {
	ok := snapshot("pos", "K1", t0.Add(time.Hour), 1)
	soon := snapshot("shop", "K2", t0.Add(30*time.Second), 1) // inside the margin
	failing := &pool.Snapshot{Name: "back", State: pool.StateExpired, LastError: &upstream.Error{Request: "verifyUser", Code: upstream.CodeUserBlocked}}
	reload := &localapi.ReloadStatus{OK: false, Error: "SESSIOND_POS_PASSWORD: required", At: t0}

	t.Run("ready", func(t *testing.T) {
		h := start(t, newFake(ok), setup{})
		expect(t, h.get("/readyz"), 200, jsonType, `{"ready":true,"credentials":{"pos":{"state":"ok","error":""}}}`+"\n")
	})
	t.Run("not ready", func(t *testing.T) {
		h := start(t, newFake(ok, soon, failing), setup{opts: func(o *localapi.Options) {
			o.LastReload = func() *localapi.ReloadStatus { return reload }
		}})
		expect(t, h.get("/readyz"), 503, jsonType, `{"ready":false,"credentials":{`+
			`"back":{"state":"expired","error":"erply verifyUser: error 1052 (login refused)"},`+
			`"pos":{"state":"ok","error":""},"shop":{"state":"ok","error":""}},`+
			`"lastReload":{"ok":false,"error":"SESSIOND_POS_PASSWORD: required","at":"2025-03-04T10:00:00Z"}}`+"\n")
	})
}

// script is a scripted source of randomness that records what it was asked.
type script struct {
	t     *testing.T
	mu    sync.Mutex
	draws []int
	asked []int
}

func (s *script) set(draws ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draws, s.asked = draws, nil
}

func (s *script) requests() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprint(s.asked)
}

func (s *script) intn(n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked = append(s.asked, n)
	if len(s.draws) == 0 {
		s.t.Errorf("unexpected draw intn(%d)", n)
		return 0
	}
	r := s.draws[0]
	s.draws = s.draws[1:]
	return r
}

func TestEndpoints(t *testing.T) {
	snap := snapshot("pos", "K1", t0.Add(time.Hour), 1)
	snap.Session.Endpoints = map[string][]upstream.Endpoint{
		"customerRegistryURLs": {
			{URL: "https://a.example/", Token: "ta", Priority: 0, Weight: 10, Raw: json.RawMessage(`{"url":"https://a.example/","token":"ta","priority":0,"weight":10}`)},
			{URL: "https://b.example/", Token: "tb", Priority: 0, Weight: 20, Raw: json.RawMessage(`{ "url": "https://b.example/", "token":"tb", "priority":"0", "weight":"20" }`)},
			{URL: "https://c.example/", Token: "tc", Priority: 1, Weight: 5, Raw: json.RawMessage(`{"url":"https://c.example/","token":"tc","priority":1,"weight":5}`)},
		},
		"cayanGatewayURLs": {
			{Target: "gw.example", Port: 443, Priority: 0, Weight: 0},
			{Target: "gw.example", Port: 8443, Priority: 0, Weight: 0, Raw: json.RawMessage(`{}`)},
			{Target: "gw2.example", Port: 443, Priority: 1, Weight: 0, Raw: json.RawMessage(`{"target":"gw2.example","port":443}`)},
		},
		"emptyURLs": {},
	}
	sc := &script{t: t}
	h := start(t, newFake(snap), setup{opts: func(o *localapi.Options) {
		o.Intn = sc.intn
		o.EndpointCooldown = 30 * time.Second
	}})
	a := `{"url":"https://a.example/","token":"ta","priority":0,"weight":10,"down":%t}`
	b := `{"url":"https://b.example/","token":"tb","priority":"0","weight":"20","down":%t}`
	c := `{"url":"https://c.example/","token":"tc","priority":1,"weight":5,"down":%t}`
	list := func(recs ...string) string { return "[" + strings.Join(recs, ",") + "]\n" }
	base := "/v1/sessions/pos/endpoints/customerRegistryURLs"

	// Priority 0 holds a (10) and b (20): one draw in [0, 30]; 25 lands on b.
	sc.set(25)
	expect(t, h.get(base), 200, jsonType, list(fmt.Sprintf(b, false), fmt.Sprintf(a, false), fmt.Sprintf(c, false)))
	// 5 lands on a.
	if got := sc.requests(); got != "[31]" {
		t.Errorf("draws asked %v, want [31]", got)
	}
	// 5 lands on a.
	sc.set(5)
	expect(t, h.get(base+"/pick"), 200, textType, "https://a.example/\n")

	// Marked down: last, with no draw left to make for the healthy ones.
	sc.set()
	expect(t, h.postForm(base+"/down", "url=https://a.example/"), 200, jsonType,
		list(fmt.Sprintf(b, false), fmt.Sprintf(c, false), fmt.Sprintf(a, true)))
	expect(t, h.get(base+"/pick"), 200, textType, "https://b.example/\n")
	h.clk.Advance(29 * time.Second)
	expect(t, h.get(base+"/pick"), 200, textType, "https://b.example/\n")
	// The cool-down ends: a is back in the draw.
	h.clk.Advance(time.Second)
	sc.set(3)
	expect(t, h.get(base+"/pick"), 200, textType, "https://a.example/\n")

	gw := "/v1/sessions/pos/endpoints/cayanGatewayURLs"
	t.Run("target host marks every port", func(t *testing.T) {
		// The two down entries have weight 0: one Fisher–Yates draw in [0, 2); 1 keeps them in place.
		sc.set(1)
		expect(t, h.postForm(gw+"/down", "target=gw.example"), 200, jsonType,
			`[{"target":"gw2.example","port":443,"down":false},{"target":"gw.example","port":443,"priority":0,"weight":0,"down":true},{"down":true}]`+"\n")
		if got := sc.requests(); got != "[2]" {
			t.Errorf("draws asked %v, want [2]", got)
		}
		h.clk.Advance(30 * time.Second)
	})
	t.Run("target host:port marks one", func(t *testing.T) {
		// Every group holds one entry: nothing to draw.
		sc.set()
		expect(t, h.do(http.MethodPost, gw+"/down?target=gw.example:8443", nil), 200, jsonType,
			`[{"target":"gw.example","port":443,"priority":0,"weight":0,"down":false},{"target":"gw2.example","port":443,"down":false},{"down":true}]`+"\n")
	})

	for _, tc := range []struct {
		name, method, path, form string
		status                   int
		ct, body                 string
	}{
		{"unknown list", "GET", "/v1/sessions/pos/endpoints/nopeURLs", "", 404, jsonType,
			`{"error":"unknown_list","message":"the session has no such endpoint list"}` + "\n"},
		{"bad list name", "GET", "/v1/sessions/pos/endpoints/no_pe/pick", "", 404, textType, "error: the session has no such endpoint list\n"},
		{"empty list", "GET", "/v1/sessions/pos/endpoints/emptyURLs", "", 200, jsonType, "[]\n"},
		{"empty list pick", "GET", "/v1/sessions/pos/endpoints/emptyURLs/pick", "", 404, textType, "error: the endpoint list is empty\n"},
		{"unknown endpoint", "POST", base + "/down", "url=https://z.example/", 404, jsonType,
			`{"error":"unknown_endpoint","message":"no such endpoint in the list"}` + "\n"},
		{"missing target", "POST", base + "/down", "x=1", 400, jsonType,
			`{"error":"missing_target","message":"form or query field url or target is required"}` + "\n"},
		{"unknown credential", "GET", "/v1/sessions/nope/endpoints/emptyURLs", "", 404, jsonType,
			`{"error":"unknown_credential","message":"unknown credential"}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got response
			if tc.method == "POST" {
				got = h.postForm(tc.path, tc.form)
			} else {
				got = h.get(tc.path)
			}
			expect(t, got, tc.status, tc.ct, tc.body)
		})
	}
}

func TestMetrics(t *testing.T) {
	withSession := snapshot("pos", "K1", t0.Add(time.Hour+500*time.Millisecond), 1)
	noSession := &pool.Snapshot{Name: "shop", State: pool.StateStarting}
	h := start(t, newFake(withSession, noSession), setup{})
	h.get("/v1/sessions/pos/key")
	h.get("/v1/sessions/pos/key")
	h.get("/v1/sessions/nope/key")
	h.get("/v1/sessions/pos/jwt")
	h.get("/no/such/path/K1")
	h.do(http.MethodPut, "/healthz", nil)

	want := `
# HELP erply_sessiond_local_requests_total Requests to the local API by route pattern and HTTP status.
# TYPE erply_sessiond_local_requests_total counter
erply_sessiond_local_requests_total{code="200",route="GET /v1/sessions/{name}/jwt"} 1
erply_sessiond_local_requests_total{code="200",route="GET /v1/sessions/{name}/key"} 2
erply_sessiond_local_requests_total{code="404",route="GET /v1/sessions/{name}/key"} 1
erply_sessiond_local_requests_total{code="404",route="unmatched"} 1
erply_sessiond_local_requests_total{code="405",route="unmatched"} 1
# HELP erply_sessiond_session_expiry_timestamp_seconds When each credential's current session expires, in Unix seconds (absent while it has none).
# TYPE erply_sessiond_session_expiry_timestamp_seconds gauge
erply_sessiond_session_expiry_timestamp_seconds{credential="pos"} 1.7410860005e+09
# HELP erply_sessiond_credential_state 1 for the state each credential is in (starting, ok, refreshing, failing, expired), 0 for the others.
# TYPE erply_sessiond_credential_state gauge
erply_sessiond_credential_state{credential="pos",state="expired"} 0
erply_sessiond_credential_state{credential="pos",state="failing"} 0
erply_sessiond_credential_state{credential="pos",state="ok"} 1
erply_sessiond_credential_state{credential="pos",state="refreshing"} 0
erply_sessiond_credential_state{credential="pos",state="starting"} 0
erply_sessiond_credential_state{credential="shop",state="expired"} 0
erply_sessiond_credential_state{credential="shop",state="failing"} 0
erply_sessiond_credential_state{credential="shop",state="ok"} 0
erply_sessiond_credential_state{credential="shop",state="refreshing"} 0
erply_sessiond_credential_state{credential="shop",state="starting"} 1
`
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(want),
		"erply_sessiond_local_requests_total", "erply_sessiond_session_expiry_timestamp_seconds", "erply_sessiond_credential_state"); err != nil {
		t.Error(err)
	}

	got := h.get("/metrics")
	if got.status != 200 || strings.Contains(got.body, "K1") {
		t.Errorf("/metrics: status %d, or it shows a key:\n%s", got.status, got.body)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus): metrics lint skipped")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(got.body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed (apt-get install curl)")
	}
	h := start(t, newFake(snapshot("pos", "K1", t0.Add(time.Hour), 1)), setup{})
	out, err := exec.Command(curl, "-fsS", "--unix-socket", h.sock, "http://localhost/v1/sessions/pos/key").Output()
	if err != nil || string(out) != "K1\n" {
		t.Errorf("curl key: %q, %v", out, err)
	}
	err = exec.Command(curl, "-fsS", "--unix-socket", h.sock, "http://localhost/v1/sessions/nope/key").Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 22 {
		t.Errorf("curl on an unknown credential: %v, want exit status 22", err)
	}
}

func TestSnapshotsPublishedDuringStart(t *testing.T) {
	// The pool publishes while New reads the initial snapshots: the
	// subscription's newer news wins over the list read before it.
	old := snapshot("pos", "OLD", t0.Add(time.Hour), 1)
	gone := snapshot("shop", "SHOP", t0.Add(time.Hour), 1)
	fake := newFake(old, gone)
	var started atomic.Bool
	fake.SnapshotsFunc = func(list []*pool.Snapshot) []*pool.Snapshot {
		if !started.Swap(true) {
			fake.publish(snapshot("pos", "NEW", t0.Add(2*time.Hour), 2))
			removed := *gone
			removed.Removed, removed.Version = true, 2
			fake.publish(&removed)
		}
		return list
	}
	h := start(t, fake, setup{})
	expect(t, h.get("/v1/sessions/pos/key"), 200, textType, "NEW\n")
	expect(t, h.get("/v1/sessions/shop/key"), 404, textType, "error: unknown credential\n")
	if n := fake.gets.Load(); n != 0 {
		t.Errorf("Get called %d times", n)
	}
}

func TestProxyRoute(t *testing.T) {
	restricted := snapshot("pos", "K1", t0.Add(time.Hour), 1)
	restricted.AllowUIDs = []uint32{1000}
	t.Run("absent", func(t *testing.T) {
		h := start(t, newFake(restricted), setup{})
		expect(t, h.postForm("/v1/sessions/pos/api", "request=getProducts"), 404, jsonType,
			`{"error":"not_found","message":"no such route"}`+"\n")
	})
	t.Run("mounted behind the checks", func(t *testing.T) {
		var calls atomic.Int32
		proxy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			if err := r.ParseForm(); err != nil {
				var tooLarge *http.MaxBytesError
				if !errors.As(err, &tooLarge) {
					t.Errorf("proxy reading the body: %v", err)
				}
				w.WriteHeader(http.StatusRequestEntityTooLarge)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTeapot)
			fmt.Fprintf(w, "proxied %s %s\n", r.PathValue("name"), r.PostForm.Get("request"))
		})
		uid := uint32(1000)
		h := start(t, newFake(restricted), setup{tcp: true, opts: func(o *localapi.Options) {
			o.Proxy = proxy
			o.TCPSessions = true
			o.PeerCred = func(net.Conn) (uint32, uint32, uint32, bool) { return atomic.LoadUint32(&uid), 1, 1, true }
		}})
		expect(t, h.postForm("/v1/sessions/pos/api", "request=getProducts"), 418, jsonType, "proxied pos getProducts\n")
		expect(t, h.postForm("/v1/sessions/nope/api", "request=getProducts"), 404, jsonType,
			`{"error":"unknown_credential","message":"unknown credential"}`+"\n")
		// The proxy reads its body through the outer 1 MiB limit (bulk calls
		// need more than the other routes' 64 KiB).
		if got := h.postForm("/v1/sessions/pos/api", "request=x&pad="+strings.Repeat("x", localapi.MaxBodyBytes)); got.status != 418 {
			t.Errorf("proxy body over 64 KiB: %d, want it passed to the proxy", got.status)
		}
		if got := h.postForm("/v1/sessions/pos/api", "request=x&pad="+strings.Repeat("x", localapi.MaxProxyBodyBytes)); got.status != 413 {
			t.Errorf("oversized proxy body: %d, want 413", got.status)
		}
		atomic.StoreUint32(&uid, 1001)
		expect(t, h.postForm("/v1/sessions/pos/api", "request=getProducts"), 403, jsonType,
			`{"error":"forbidden","message":"uid 1001 may not read this credential"}`+"\n")
		if got := h.doTCP(http.MethodPost, "/v1/sessions/pos/api"); got.status != 412 {
			t.Errorf("proxy on TCP without the header: %d, want 412", got.status)
		}
		if n := calls.Load(); n != 3 {
			t.Errorf("proxy called %d times, want 3 (the first, the one over 64 KiB and the oversized one)", n)
		}
	})
}
