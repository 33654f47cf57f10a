package localapi_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/localapi"
)

// Issue 16 item 5: the routes accept every name config accepts (the
// longest included), and nothing longer; one rule, config.ValidName.
func TestRoutesServeEveryNameConfigAccepts(t *testing.T) {
	longest := strings.Repeat("n", config.MaxNameLen)
	h := start(t, newFake(snapshot(longest, "key-longest", t0.Add(time.Hour), 1)), setup{})
	if r := h.get("/v1/sessions/" + longest + "/key"); r.status != http.StatusOK || r.body != "key-longest\n" {
		t.Fatalf("a %d-character name: %d %q", config.MaxNameLen, r.status, r.body)
	}
	if r := h.get("/v1/sessions/" + longest + "n/key"); r.status != http.StatusNotFound {
		t.Fatalf("a %d-character name: %d, want 404", config.MaxNameLen+1, r.status)
	}
}

// Issue 16 item 3: a daemon stopping removed the socket at its path even
// when another daemon had since made its own socket there, leaving that
// one running and unreachable. Shutdown removes the socket only while it
// is the one ListenUnix made (same device and inode).
func TestShutdownLeavesAnotherDaemonsSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "s.sock")
	srv := localapi.New(localapi.Options{Sessions: newFake(), Clock: clock.NewFake(t0)})
	l, err := localapi.ListenUnix(path, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l, false) }()

	// A second daemon on the same path: the file is replaced.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the other daemon's socket is gone after the first one stopped: %v", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the other daemon is unreachable: %v", err)
	}
	c.Close()
}

// The socket ListenUnix made is still removed when it is closed.
func TestListenUnixRemovesItsOwnSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "s.sock")
	l, err := localapi.ListenUnix(path, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
}

// tcpWithHost sends a session request on the TCP listener with the
// required header and the given Host.
func (h *harness) tcpWithHost(path, host string) response {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+h.tcp+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Host = host
	req.Header.Set(localapi.RequestHeader, "1")
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	res, err := c.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return response{status: res.StatusCode, header: res.Header, body: string(b)}
}

// Issue 16 item 9: with TCP sessions on, a page reached through DNS
// rebinding (Host: its own domain, now resolving to 127.0.0.1) could set
// the header and read keys; and a credential restricted to some uids was
// served to anyone over TCP (uid 65534: 403 on the socket, 200 on TCP).
func TestTCPSessionsOnlyForLoopbackHostsAndUnrestrictedCredentials(t *testing.T) {
	open := snapshot("pos", "key-pos", t0.Add(time.Hour), 1)
	restricted := snapshot("cashier", "key-cashier", t0.Add(time.Hour), 1)
	restricted.AllowUIDs = []uint32{1000}
	h := start(t, newFake(open, restricted), setup{tcp: true, opts: func(o *localapi.Options) {
		o.TCPSessions = true
		o.PeerCred = func(net.Conn) (uint32, uint32, uint32, bool) { return 65534, 65534, 1, true }
	}})
	_, port, _ := net.SplitHostPort(h.tcp)
	for _, host := range []string{"127.0.0.1:" + port, "localhost:" + port, "LOCALHOST:" + port, "[::1]:" + port, "127.0.0.1", "localhost"} {
		if r := h.tcpWithHost("/v1/sessions/pos/key", host); r.status != http.StatusOK || r.body != "key-pos\n" {
			t.Errorf("Host %s: %d %q, want the key", host, r.status, r.body)
		}
	}
	for _, host := range []string{"rebind.example:" + port, "rebind.example", "127.0.0.1.nip.io:" + port, "localhost.example:" + port, "10.0.0.1:" + port} {
		r := h.tcpWithHost("/v1/sessions/pos/key", host)
		if r.status != http.StatusForbidden || strings.Contains(r.body, "key-pos") || !strings.Contains(r.body, "loopback Host") {
			t.Errorf("Host %s: %d %q, want 403 naming the loopback rule", host, r.status, r.body)
		}
	}

	if r := h.get("/v1/sessions/cashier/key"); r.status != http.StatusForbidden {
		t.Fatalf("uid 65534 on the socket: %d, want 403", r.status)
	}
	host := "127.0.0.1:" + port
	if r := h.tcpWithHost("/v1/sessions/cashier/key", host); r.status != http.StatusForbidden || strings.Contains(r.body, "key-cashier") {
		t.Fatalf("restricted credential on TCP: %d %q, want 403", r.status, r.body)
	}
	if r := h.tcpWithHost("/v1/sessions", host); r.status != http.StatusOK || strings.Contains(r.body, `"cashier"`) || !strings.Contains(r.body, `"pos"`) {
		t.Fatalf("listing on TCP: %d %s, want pos only", r.status, r.body)
	}
}

// Issue 16 item 12: a password in SESSIOND_API_URL's user info came back
// verbatim in the session's apiURL.
func TestSessionAnswerRedactsAPIURLPassword(t *testing.T) {
	s := snapshot("pos", "key-pos", t0.Add(time.Hour), 1)
	s.APIURL = "https://api:s3cret-pw@104001.example/api/"
	h := start(t, newFake(s), setup{})
	r := h.get("/v1/sessions/pos")
	if r.status != http.StatusOK || strings.Contains(r.body, "s3cret-pw") || !strings.Contains(r.body, `"apiURL":"https://api:xxxxx@104001.example/api/"`) {
		t.Fatalf("session answer: %d %s", r.status, r.body)
	}
}

// rawGet sends a GET on an open connection and reads the answer's status
// line and headers (and the body, by Content-Length).
func rawGet(t *testing.T, c net.Conn, path string) (int, string) {
	t.Helper()
	// A refused connection is answered and closed without the request
	// being read: the write may then fail (EPIPE) while the answer is
	// there to read, so a write error alone is not the outcome.
	_, werr := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: sessiond\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v (write: %v)", path, err, werr)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// Issue 16 item 11: past the file descriptor limit every caller timed out;
// one user holding many idle connections must not stop another user's
// requests. Each peer uid gets MaxConnsPerUID connections; the next is
// answered 503 at once and closed, and other users are served as before.
func TestOneUsersConnectionsDoNotStopAnothers(t *testing.T) {
	var uid atomic.Uint32 // the uid the next accepted connection reads as
	h := start(t, newFake(snapshot("pos", "key-pos", t0.Add(time.Hour), 1)), setup{opts: func(o *localapi.Options) {
		o.MaxConnsPerUID = 4
		o.PeerCred = func(net.Conn) (uint32, uint32, uint32, bool) { return uid.Load(), 100, 1, true }
	}})
	dial := func() net.Conn {
		c, err := net.Dial("unix", h.sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	uid.Store(1000)
	for i := range 4 { // held open and idle after one request each
		if code, _ := rawGet(t, dial(), "/healthz"); code != http.StatusOK {
			t.Fatalf("uid 1000's connection %d: %d", i+1, code)
		}
	}
	code, body := rawGet(t, dial(), "/v1/sessions/pos/key")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "too_many_connections") || strings.Contains(body, "key-pos") {
		t.Fatalf("uid 1000's fifth connection: %d %q, want 503 too_many_connections", code, body)
	}
	uid.Store(2000)
	if code, body := rawGet(t, dial(), "/v1/sessions/pos/key"); code != http.StatusOK || body != "key-pos\n" {
		t.Fatalf("uid 2000 while uid 1000 holds its connections: %d %q", code, body)
	}
	if n := testutil.ToFloat64(mustCounter(t, h.reg, "erply_sessiond_local_connections_refused_total")); n != 1 {
		t.Fatalf("connections_refused_total = %v, want 1", n)
	}
}

// An idle keep-alive connection is closed after IdleTimeout.
func TestIdleConnectionsAreClosed(t *testing.T) {
	h := start(t, newFake(), setup{opts: func(o *localapi.Options) { o.IdleTimeout = 50 * time.Millisecond }})
	c, err := net.Dial("unix", h.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if code, _ := rawGet(t, c, "/healthz"); code != http.StatusOK {
		t.Fatal(code)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read on an idle connection: %v, want EOF (closed by the daemon)", err)
	}
}

// mustCounter returns a registry's one series of name as a collector
// testutil can read.
func mustCounter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			v := mf.GetMetric()[0].GetCounter().GetValue()
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x"}, func() float64 { return v })
		}
	}
	t.Fatalf("no single series of %s", name)
	return nil
}
