package sdnotify

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
)

// hangGuard bounds every wait in these tests so that a bug fails the test
// instead of hanging it; nothing waits for it to pass.
const hangGuard = 10 * time.Second

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// listenNotify stands in for systemd's notification socket.
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(hangGuard)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _, err := c.ReadFromUnix(buf)
	if err != nil {
		t.Fatalf("no sd_notify message: %v", err)
	}
	return string(buf[:n])
}

func expect(t *testing.T, c *net.UnixConn, want string) {
	t.Helper()
	if got := recv(t, c); got != want {
		t.Fatalf("sd_notify message = %q, want %q", got, want)
	}
}

// advanceAndWait advances clk by d and waits until the watchdog loop has
// handled the tick, which it signals by arming its next timer.
func advanceAndWait(t *testing.T, clk *clock.Fake, d time.Duration) {
	t.Helper()
	armed := clk.Changed()
	clk.Advance(d)
	select {
	case <-armed:
	case <-time.After(hangGuard):
		t.Fatal("watchdog loop did not re-arm its timer")
	}
}

func TestNotifierProtocolSequence(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	systemd := listenNotify(t, sock)
	clk := clock.NewFake(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	logs := &syncBuffer{}
	n := New(env(map[string]string{
		"NOTIFY_SOCKET": sock,
		"WATCHDOG_USEC": "30000000", // WatchdogSec=30s
		"WATCHDOG_PID":  strconv.Itoa(os.Getpid()),
	}), clk, zerolog.New(logs))

	if !n.Enabled() || n.WatchdogInterval() != 30*time.Second {
		t.Fatalf("Enabled=%v WatchdogInterval=%v, want true 30s", n.Enabled(), n.WatchdogInterval())
	}

	n.Ready()
	expect(t, systemd, "READY=1")

	n.Status("2 ok, 1 failing")
	n.Status("2 ok, 1 failing") // unchanged: not sent again
	n.Status("3 ok")
	expect(t, systemd, "STATUS=2 ok, 1 failing")
	expect(t, systemd, "STATUS=3 ok")

	var alive atomic.Bool
	alive.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	armed := clk.Changed()
	go func() { done <- n.RunWatchdog(ctx, alive.Load) }()
	<-armed

	// Nothing before half the watchdog timeout; an early ping would show up
	// below as an unexpected extra message.
	clk.Advance(15*time.Second - time.Millisecond)
	advanceAndWait(t, clk, time.Millisecond)
	expect(t, systemd, "WATCHDOG=1")
	advanceAndWait(t, clk, 15*time.Second)
	expect(t, systemd, "WATCHDOG=1")

	// An unhealthy daemon stops pinging, so systemd restarts it.
	alive.Store(false)
	advanceAndWait(t, clk, 15*time.Second)
	if !strings.Contains(logs.String(), "not pinging the systemd watchdog") {
		t.Errorf("a skipped ping was not logged; logs:\n%s", logs)
	}

	n.Reloading()
	msg := recv(t, systemd)
	mono, ok := strings.CutPrefix(msg, "RELOADING=1\nMONOTONIC_USEC=")
	if !ok {
		t.Fatalf("reload message = %q, want RELOADING=1 then MONOTONIC_USEC=", msg)
	}
	if v, err := strconv.ParseUint(mono, 10, 64); err != nil || v == 0 {
		t.Fatalf("MONOTONIC_USEC=%q is not a positive integer", mono)
	}
	n.Ready()
	expect(t, systemd, "READY=1")

	alive.Store(true)
	advanceAndWait(t, clk, 15*time.Second)
	expect(t, systemd, "WATCHDOG=1")

	n.Stopping()
	expect(t, systemd, "STOPPING=1")

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunWatchdog = %v, want nil", err)
		}
	case <-time.After(hangGuard):
		t.Fatal("RunWatchdog did not return after its context ended")
	}
	if p := clk.Pending(); p != 0 {
		t.Fatalf("%d timers left armed after RunWatchdog returned", p)
	}
}

func TestNotifierSocketAddresses(t *testing.T) {
	for _, tc := range []struct {
		name string
		addr func(t *testing.T) string
	}{
		{"path", func(t *testing.T) string { return filepath.Join(t.TempDir(), "notify") }},
		// systemd --user and containers may hand out abstract sockets.
		{"abstract", func(t *testing.T) string { return fmt.Sprintf("@erply-sessiond-sdnotify-test-%d", os.Getpid()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.addr(t)
			systemd := listenNotify(t, addr)
			n := New(env(map[string]string{"NOTIFY_SOCKET": addr}), clock.NewFake(time.Unix(0, 0)), zerolog.New(zerolog.NewTestWriter(t)))
			n.Ready()
			expect(t, systemd, "READY=1")
		})
	}
}

func TestNotifierStatusIsOneLine(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	systemd := listenNotify(t, sock)
	n := New(env(map[string]string{"NOTIFY_SOCKET": sock}), clock.NewFake(time.Unix(0, 0)), zerolog.New(zerolog.NewTestWriter(t)))
	// A newline would end the STATUS= assignment and start a bogus one.
	n.Status("pos: failing\nREADY=1")
	expect(t, systemd, "STATUS=pos: failing READY=1")
}

func TestNotifierSendFailureIsLoggedAtDebugAndRetried(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	logs := &syncBuffer{}
	n := New(env(map[string]string{"NOTIFY_SOCKET": sock}), clock.NewFake(time.Unix(0, 0)), zerolog.New(logs))

	n.Ready() // nobody listening yet
	n.Status("1 ok")
	for _, want := range []string{`"level":"debug"`, `"message":"READY"`, `"message":"STATUS"`, "sd_notify failed"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s; logs:\n%s", want, logs)
		}
	}
	if strings.Contains(logs.String(), `"level":"error"`) || strings.Contains(logs.String(), `"level":"warn"`) {
		t.Errorf("a failed sd_notify was logged above debug:\n%s", logs)
	}

	// The failed status was not recorded as sent: once the manager
	// listens, the same line goes through.
	systemd := listenNotify(t, sock)
	n.Status("1 ok")
	expect(t, systemd, "STATUS=1 ok")
}

func TestNotifierDisabled(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name         string
		env          map[string]string
		wantEnabled  bool
		wantInterval time.Duration
		wantLog      string
	}{
		{"no manager", map[string]string{"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}, false, 0, ""},
		{"no watchdog", map[string]string{"NOTIFY_SOCKET": "/nonexistent/notify"}, true, 0, ""},
		{"watchdog for another process", map[string]string{"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, true, 0, ""},
		{"watchdog without pid", map[string]string{"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": "20000000"}, true, 20 * time.Second, ""},
		{"bad watchdog usec", map[string]string{"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": "30s"}, true, 0, "WATCHDOG_USEC is not a positive number"},
		{"zero watchdog usec", map[string]string{"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": "0"}, true, 0, "WATCHDOG_USEC is not a positive number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &syncBuffer{}
			clk := clock.NewFake(time.Unix(0, 0))
			n := New(env(tc.env), clk, zerolog.New(logs))
			if n.Enabled() != tc.wantEnabled || n.WatchdogInterval() != tc.wantInterval {
				t.Fatalf("Enabled=%v WatchdogInterval=%v, want %v %v", n.Enabled(), n.WatchdogInterval(), tc.wantEnabled, tc.wantInterval)
			}
			if tc.wantLog != "" && !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log lacks %q:\n%s", tc.wantLog, logs)
			}
			if tc.wantInterval != 0 {
				return
			}
			// Without a watchdog RunWatchdog returns at once, even
			// though its context never ends, and arms no timer.
			done := make(chan error, 1)
			go func() { done <- n.RunWatchdog(context.Background(), func() bool { return true }) }()
			select {
			case <-done:
			case <-time.After(hangGuard):
				t.Fatal("RunWatchdog blocked without a watchdog")
			}
			if clk.Pending() != 0 {
				t.Fatal("RunWatchdog armed a timer without a watchdog")
			}
		})
	}
}
