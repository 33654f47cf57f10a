package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/client"
	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// Tests of the built binary as a process: signals, the subcommands, socket
// activation and sd_notify, against a fake Erply in the test process on the
// real clock.

// testVersion is stamped into the test build, as the release build stamps its version.
const testVersion = "e2e-test"

var built struct {
	once sync.Once
	dir  string
	path string
	err  error
	out  []byte
}

// daemonBinary builds erply-sessiond once per test run and returns its path.
func daemonBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		gotool, err := exec.LookPath("go")
		if err != nil {
			built.err = err
			return
		}
		if built.dir, built.err = os.MkdirTemp("", "sessiond-bin"); built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "erply-sessiond")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, gotool, "build", "-o", built.path, "-ldflags", "-X main.version="+testVersion, ".")
		built.out, built.err = cmd.CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("go build: %v\n%s", built.err, built.out)
	}
	return built.path
}

// removeBuiltBinary deletes what daemonBinary built (TestMain calls it).
func removeBuiltBinary() {
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
}

// logWatch collects a process's output and wakes waiters on every write.
type logWatch struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{}
}

func newLogWatch() *logWatch { return &logWatch{changed: make(chan struct{})} }

func (w *logWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	close(w.changed)
	w.changed = make(chan struct{})
	return len(p), nil
}

func (w *logWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// wait returns once the output contains s, or fails after within or when
// exited closes first.
func (w *logWatch) wait(t *testing.T, s string, within time.Duration, exited <-chan struct{}) {
	t.Helper()
	w.waitFunc(t, fmt.Sprintf("%q", s), within, exited, func(out string) bool { return strings.Contains(out, s) })
}

// waitFunc returns once ok holds for the whole output so far, checking at
// every write; it fails after within, or when exited closes first.
func (w *logWatch) waitFunc(t *testing.T, what string, within time.Duration, exited <-chan struct{}, ok func(out string) bool) {
	t.Helper()
	timeout := time.NewTimer(within)
	defer timeout.Stop()
	for {
		w.mu.Lock()
		found, changed := ok(w.b.String()), w.changed
		w.mu.Unlock()
		if found {
			return
		}
		select {
		case <-changed:
		case <-exited:
			if ok(w.String()) {
				return
			}
			t.Fatalf("process exited before printing %s:\n%s", what, w)
		case <-timeout.C:
			t.Fatalf("no %s within %v:\n%s", what, within, w)
		}
	}
}

// proc is a started process.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr *logWatch
	stdout *logWatch
	done   chan struct{}
	err    error
}

func startProc(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{t: t, cmd: cmd, stderr: newLogWatch(), stdout: newLogWatch(), done: make(chan struct{})}
	cmd.Stderr, cmd.Stdout = p.stderr, p.stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// stop sends sig and returns the exit code.
func (p *proc) stop(sig os.Signal) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.t.Fatalf("no exit within 20s of %v:\n%s", sig, p.stderr)
	}
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		p.t.Fatal(p.err)
	}
	return p.cmd.ProcessState.ExitCode()
}

// procSetup is a fake Erply on the real clock and a daemon environment for it.
type procSetup struct {
	fake   *erplytest.Server
	dir    string
	socket string
	env    map[string]string
	pw     string
	pin    string
}

func newProcSetup(t *testing.T) *procSetup {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	fake := erplytest.New(clock.Real{})
	t.Cleanup(fake.Close)
	code, user, pw, pin := fake.SeedDemo()
	s := &procSetup{fake: fake, dir: dir, socket: filepath.Join(dir, "s.sock"), pw: pw, pin: pin}
	for name, secret := range map[string]string{"pos.password": pw, "cashier.pin": pin} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Secrets come from files so that none is on a command line.
	s.env = map[string]string{
		"SESSIOND_CREDENTIALS":       "pos,cashier",
		"SESSIOND_SOCKET":            s.socket,
		"SESSIOND_API_URL":           fake.APIURL(),
		"SESSIOND_POS_CLIENT_CODE":   code,
		"SESSIOND_POS_USERNAME":      user,
		"SESSIOND_POS_PASSWORD_FILE": filepath.Join(dir, "pos.password"),
		"SESSIOND_CASHIER_KIND":      "pin",
		"SESSIOND_CASHIER_PARENT":    "pos",
		"SESSIOND_CASHIER_PIN_FILE":  filepath.Join(dir, "cashier.pin"),
	}
	return s
}

// environ is the child's whole environment: nothing of the test process's
// (no NOTIFY_SOCKET or LISTEN_* from whoever runs the tests).
func (s *procSetup) environ(extra ...string) []string {
	out := []string{"PATH=/usr/bin:/bin"}
	for k, v := range s.env {
		out = append(out, k+"="+v)
	}
	return append(out, extra...)
}

// runCmd runs the binary to completion and returns stdout, stderr and the exit code.
func runCmd(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, daemonBinary(t), args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%v: %v", args, err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// TestProcessSIGTERM runs the built daemon, reads from it with the client
// package and the get subcommand, and stops it with SIGTERM: exit 0, socket
// removed, "stopped" logged.
func TestProcessSIGTERM(t *testing.T) {
	bin := daemonBinary(t)
	s := newProcSetup(t)
	cmd := exec.Command(bin)
	cmd.Env = s.environ()
	p := startProc(t, cmd)
	p.stderr.wait(t, `"message":"ready"`, 20*time.Second, p.done)

	c := client.New(s.socket)
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Ready(ctx); err != nil {
		t.Fatalf("ready logged but /readyz says %v", err)
	}
	key, err := c.Key(ctx, "pos")
	if err != nil || !s.fake.SessionValid(key) {
		t.Fatalf("key %v valid=%v", err, s.fake.SessionValid(key))
	}

	env := s.environ()
	if out, errOut, code := runCmd(t, env, "get", "-socket", s.socket, "pos", "key"); code != 0 || out != key+"\n" {
		t.Fatalf("get pos key = exit %d %q %q", code, out, errOut)
	}
	// The socket from SESSIOND_SOCKET, and the default "key".
	if out, _, code := runCmd(t, env, "get", "pos"); code != 0 || out != key+"\n" {
		t.Fatalf("get pos (SESSIOND_SOCKET) = exit %d %q", code, out)
	}
	if out, _, code := runCmd(t, env, "get", "-socket", s.socket, "cashier", "json"); code != 0 || !strings.Contains(out, `"userName":"cashier@demo.example"`) {
		t.Fatalf("get cashier json = exit %d %q", code, out)
	}
	out, errOut, code := runCmd(t, env, "get", "-socket", s.socket, "nosuch")
	if code != exitFailure || out != "" || !strings.Contains(errOut, "404") || !strings.Contains(errOut, "unknown credential") {
		t.Fatalf("get nosuch = exit %d stdout %q stderr %q, want %d and the daemon's error", code, out, errOut, exitFailure)
	}
	for _, flag := range []string{"--health", "--ready"} {
		if _, errOut, code := runCmd(t, env, "get", "-socket", s.socket, flag); code != 0 {
			t.Fatalf("get %s = exit %d %s", flag, code, errOut)
		}
	}
	if _, errOut, code := runCmd(t, env, "get", "-socket", filepath.Join(s.dir, "none.sock"), "--health"); code != exitUnreachable || errOut == "" {
		t.Fatalf("get --health without a daemon = exit %d %q, want %d with the error", code, errOut, exitUnreachable)
	}

	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0\n%s", code, p.stderr)
	}
	if _, err := os.Lstat(s.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after SIGTERM: %v", err)
	}
	logs := p.stderr.String()
	if !strings.Contains(logs, `"message":"shutting down"`) || !strings.Contains(logs, `"message":"stopped"`) {
		t.Fatalf("log does not say it stopped:\n%s", logs)
	}
	for _, secret := range []string{key, s.pw} {
		if strings.Contains(logs, secret) {
			t.Fatal("the daemon's log carries a secret")
		}
	}
}

// TestProcessCommands covers check-config, version, -h and an unknown command.
func TestProcessCommands(t *testing.T) {
	s := newProcSetup(t)
	s.env["SESSIOND_POS_PASSWORD_FILE"] = ""
	delete(s.env, "SESSIOND_POS_PASSWORD_FILE")
	s.env["SESSIOND_POS_PASSWORD"] = s.pw // inline, so check-config must keep it out
	s.env["SESSIOND_CASHIER_PIN"] = s.pin
	delete(s.env, "SESSIOND_CASHIER_PIN_FILE")

	out, errOut, code := runCmd(t, s.environ(), "check-config")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "pos: kind=password") || !strings.HasPrefix(lines[1], "cashier: kind=pin") {
		t.Fatalf("check-config = exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(lines[0], "secret=inline") || strings.Contains(out+errOut, s.pw) || strings.Contains(out+errOut, s.pin) {
		t.Fatalf("check-config shows a secret or not where it comes from:\n%s", out)
	}

	bad := s.environ("SESSIOND_POS_SESSION_LENGTH=0", "SESSIOND_SOCKET_MODE=rw")
	out, errOut, code = runCmd(t, bad, "check-config")
	if code != exitConfig || !strings.Contains(out+errOut, "SESSIOND_POS_SESSION_LENGTH") || !strings.Contains(out+errOut, "SESSIOND_SOCKET_MODE") {
		t.Fatalf("check-config on a bad env = exit %d\n%s%s\nwant %d naming both variables", code, out, errOut, exitConfig)
	}
	// The daemon refuses the same configuration at start, naming the variable.
	_, errOut, code = runCmd(t, bad)
	if code != exitConfig || !strings.Contains(errOut, "SESSIOND_POS_SESSION_LENGTH") {
		t.Fatalf("serve on a bad env = exit %d %s, want %d (the status the unit does not restart on)", code, errOut, exitConfig)
	}
	if _, err := os.Lstat(s.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a refused configuration made the socket")
	}

	if out, _, code := runCmd(t, nil, "version"); code != 0 || out != "erply-sessiond "+testVersion+"\n" {
		t.Fatalf("version = exit %d %q", code, out)
	}
	for _, args := range [][]string{{"-h"}, {"serve", "-h"}, {"demo", "-h"}, {"get", "-h"}, {"check-config", "-h"}} {
		out, errOut, code := runCmd(t, nil, args...)
		if code != 0 || !strings.Contains(out+errOut, "SESSIOND_") || !strings.Contains(out+errOut, "Usage") {
			t.Errorf("%v = exit %d, want 0 and a usage naming SESSIOND_ variables:\n%s%s", args, code, out, errOut)
		}
	}
	if _, errOut, code := runCmd(t, nil, "frobnicate"); code != exitUsage || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Fatalf("unknown command = exit %d %q", code, errOut)
	}
}

// activated checks a socket-activated daemon: it serves on the passed
// socket, never makes SESSIOND_SOCKET, and leaves the passed socket in place
// when SIGTERM stops it.
func activated(t *testing.T, s *procSetup, p *proc, sock string) {
	t.Helper()
	c := client.New(sock)
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	key, err := c.Key(ctx, "pos")
	if err != nil || !s.fake.SessionValid(key) {
		t.Fatalf("key over the passed socket: %v\n%s", err, p.stderr)
	}
	p.stderr.wait(t, `"message":"ready"`, 20*time.Second, p.done)
	if !strings.Contains(p.stderr.String(), "using the socket passed by systemd") {
		t.Fatalf("no log line about the passed socket:\n%s", p.stderr)
	}
	if _, err := os.Lstat(s.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("SESSIOND_SOCKET was created although a socket was passed: %v", err)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d\n%s", code, p.stderr)
	}
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("the passed socket is gone after exit: %v", err)
	}
	if !strings.Contains(p.stderr.String(), `"message":"stopped"`) {
		t.Fatalf("log does not say it stopped:\n%s", p.stderr)
	}
}

// TestActivationInheritedFD passes a listening socket as fd 3 with
// LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES set in the daemon's own process (sh's
// exec keeps the pid), as systemd does.
func TestActivationInheritedFD(t *testing.T) {
	bin := daemonBinary(t)
	s := newProcSetup(t)
	sock := filepath.Join(s.dir, "act.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", `export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=sessiond; exec "$0"`, bin)
	cmd.Env = s.environ()
	cmd.ExtraFiles = []*os.File{f}
	p := startProc(t, cmd)
	f.Close()
	activated(t, s, p, sock)
}

// TestActivationSystemdSocketActivate starts the daemon through systemd's own
// socket-activation tool, which execs it on the first connection.
func TestActivationSystemdSocketActivate(t *testing.T) {
	ssa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate not installed (Debian package systemd)")
	}
	bin := daemonBinary(t)
	s := newProcSetup(t)
	sock := filepath.Join(s.dir, "act.sock")
	args := []string{"-l", sock, "--fdname=sessiond"}
	for _, kv := range s.environ() {
		args = append(args, "-E", kv)
	}
	cmd := exec.Command(ssa, append(args, bin)...)
	cmd.Env = s.environ()
	p := startProc(t, cmd)
	p.stderr.wait(t, "Listening on "+sock, 10*time.Second, p.done)
	activated(t, s, p, sock)
}

// TestSdNotifyEndToEnd listens on a NOTIFY_SOCKET and checks what the real
// binary tells the service manager, in order: STATUS lines up to all ok,
// READY=1, WATCHDOG=1 pings, RELOADING=1 and READY=1 around a SIGHUP, and
// STOPPING=1 on SIGTERM.
func TestSdNotifyEndToEnd(t *testing.T) {
	bin := daemonBinary(t)
	s := newProcSetup(t)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(s.dir, "notify.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan string, 1024)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	defer func() { conn.Close(); <-readerDone }()

	var seen []string
	next := func(prefix string) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for {
			select {
			case m := <-msgs:
				seen = append(seen, m)
				if strings.HasPrefix(m, prefix) {
					return
				}
			case <-timeout:
				t.Fatalf("no %q; got %q", prefix, seen)
			}
		}
	}

	cmd := exec.Command(bin)
	cmd.Env = s.environ("NOTIFY_SOCKET="+conn.LocalAddr().String(), "WATCHDOG_USEC=400000")
	p := startProc(t, cmd)
	next("READY=1")
	ready := len(seen) - 1
	next("WATCHDOG=1")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	next("RELOADING=1")
	reloading := len(seen) - 1
	next("READY=1")
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d\n%s", code, p.stderr)
	}
	next("STOPPING=1")
	t.Logf("sd_notify messages in order: %q", seen)

	// Before READY: status lines only, the last one saying every credential is ok.
	var lastStatus string
	for _, m := range seen[:ready] {
		if !strings.HasPrefix(m, "STATUS=") {
			t.Fatalf("%q before READY=1 (all: %q)", m, seen)
		}
		lastStatus = m
	}
	if lastStatus != "STATUS=2 credentials; ok: pos,cashier" {
		t.Fatalf("last status before READY = %q (all: %q)", lastStatus, seen)
	}
	if !strings.Contains(seen[reloading], "MONOTONIC_USEC=") {
		t.Fatalf("RELOADING=1 without MONOTONIC_USEC: %q", seen[reloading])
	}
	for _, m := range seen {
		for _, secret := range []string{s.pw, s.pin} {
			if strings.Contains(m, secret) {
				t.Fatal("an sd_notify message carries a secret")
			}
		}
	}
	if !strings.Contains(p.stderr.String(), "configuration reloaded") {
		t.Fatalf("SIGHUP did not reload:\n%s", p.stderr)
	}
}
