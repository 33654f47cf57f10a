// Package sessiondtest owns running a built erply-sessiond binary as a separate process, for the process-level tests of its clients (the SDK provider, PHP, shell) and for benchmarks.
package sessiondtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/erply-sessiond/erply-sessiond/client"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// ModulePath is the daemon's module; Build compiles its main package.
const ModulePath = "github.com/erply-sessiond/erply-sessiond"

// DefaultReadyTimeout bounds Start's wait for READY=1.
const DefaultReadyTimeout = 30 * time.Second

// Build compiles the daemon into dir and returns the binary's path. It
// finds the daemon's source with `go list -m`, so it works from this module
// and from a nested module that replaces the daemon's module with this
// checkout (as sdk/erplysession does).
func Build(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", ModulePath).Output()
	if err != nil {
		return "", fmt.Errorf("sessiondtest: finding %s: %w", ModulePath, err)
	}
	root := strings.TrimSpace(string(out))
	if root == "" {
		return "", fmt.Errorf("sessiondtest: %s has no directory here (is it replaced by a path?)", ModulePath)
	}
	bin := filepath.Join(dir, "erply-sessiond")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("sessiondtest: go build: %w\n%s", err, b)
	}
	return bin, nil
}

// Options configure Start.
type Options struct {
	// Binary is the daemon to run (see Build). Required.
	Binary string
	// Env is the daemon's whole environment besides PATH, SESSIOND_SOCKET
	// and NOTIFY_SOCKET, as KEY=VALUE.
	Env []string
	// Socket is the daemon's socket (SESSIOND_SOCKET). Required; keep it
	// short: Unix socket paths are limited to about 108 bytes.
	Socket string
	// Log, when set, gets the daemon's standard error (its log).
	Log io.Writer
	// ReadyTimeout bounds the wait for READY=1 (default DefaultReadyTimeout).
	ReadyTimeout time.Duration
}

// Daemon is a running daemon process. Stop it when done.
type Daemon struct {
	// Socket is where it listens; Client talks to it.
	Socket string
	Client *client.Client

	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, set before done is closed
	logs *syncBuffer
	once sync.Once
}

// Start runs the daemon and returns once it has told its service manager
// READY=1 (its socket listens and every credential holds a session or a
// definite error), which it reads from a NOTIFY_SOCKET of its own rather
// than polling. It fails, with the daemon's log, if the process exits or
// is not ready within ReadyTimeout.
func Start(ctx context.Context, o Options) (*Daemon, error) {
	if o.Binary == "" || o.Socket == "" {
		return nil, errors.New("sessiondtest: Options.Binary and Options.Socket are required")
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = DefaultReadyTimeout
	}
	notifyDir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(notifyDir)
	notifyPath := filepath.Join(notifyDir, "n.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("sessiondtest: notify socket: %w", err)
	}
	defer notify.Close()

	logs := &syncBuffer{}
	var stderr io.Writer = logs
	if o.Log != nil {
		stderr = io.MultiWriter(logs, o.Log)
	}
	cmd := exec.Command(o.Binary, "serve")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "SESSIOND_SOCKET=" + o.Socket, "NOTIFY_SOCKET=" + notifyPath}, o.Env...)
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("sessiondtest: starting the daemon: %w", err)
	}
	d := &Daemon{Socket: o.Socket, Client: client.New(o.Socket), cmd: cmd, done: make(chan struct{}), logs: logs}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()

	ready := make(chan error, 1)
	go func() { ready <- awaitReady(notify) }()
	timer := time.NewTimer(o.ReadyTimeout)
	defer timer.Stop()
	var fail error
	select {
	case err := <-ready:
		if err == nil {
			return d, nil
		}
		fail = err
	case <-d.done:
		fail = fmt.Errorf("exited before it was ready: %v", d.err)
	case <-timer.C:
		fail = fmt.Errorf("not ready after %v", o.ReadyTimeout)
	case <-ctx.Done():
		fail = ctx.Err()
	}
	notify.Close() // ends awaitReady
	<-ready
	d.kill()
	return nil, fmt.Errorf("sessiondtest: daemon %w\n%s", fail, logs.String())
}

// awaitReady reads notify datagrams until one carries READY=1.
func awaitReady(c *net.UnixConn) error {
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		for line := range strings.Lines(string(buf[:n])) {
			if strings.TrimSpace(line) == "READY=1" {
				return nil
			}
		}
	}
}

// PID is the daemon's process ID, e.g. to read its /proc/PID/status.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// Logs returns what the daemon has logged so far.
func (d *Daemon) Logs() string { return d.logs.String() }

// Stop sends SIGTERM and waits for the process, at most 10 s (then it is
// killed). It returns an error, with the daemon's log, unless the daemon
// exited 0 and removed its socket, as its contract says.
func (d *Daemon) Stop() error {
	var err error
	d.once.Do(func() {
		d.Client.CloseIdleConnections()
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		timer := time.NewTimer(10 * time.Second)
		defer timer.Stop()
		select {
		case <-d.done:
		case <-timer.C:
			d.kill()
			err = fmt.Errorf("sessiondtest: daemon did not stop within 10 s of SIGTERM\n%s", d.logs.String())
			return
		}
		if d.err != nil {
			err = fmt.Errorf("sessiondtest: daemon exited with %v after SIGTERM\n%s", d.err, d.logs.String())
			return
		}
		if _, serr := os.Lstat(d.Socket); serr == nil {
			err = fmt.Errorf("sessiondtest: daemon left its socket %s behind", d.Socket)
		}
	})
	return err
}

// kill ends the process at once and waits for it.
func (d *Daemon) kill() {
	d.Client.CloseIdleConnections()
	_ = d.cmd.Process.Kill()
	<-d.done
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// DemoEnv seeds fake's demo account and returns the daemon settings of two
// credentials on it: pos (password, the manager) and cashier (pin, on top of
// pos), against fake's API URL, with logs at debug level.
func DemoEnv(fake *erplytest.Server) []string {
	code, user, password, pin := fake.SeedDemo()
	return []string{
		"SESSIOND_LOG_LEVEL=debug",
		"SESSIOND_API_URL=" + fake.APIURL(),
		"SESSIOND_CREDENTIALS=pos,cashier",
		"SESSIOND_POS_CLIENT_CODE=" + code,
		"SESSIOND_POS_USERNAME=" + user,
		"SESSIOND_POS_PASSWORD=" + password,
		"SESSIOND_CASHIER_KIND=pin",
		"SESSIOND_CASHIER_PARENT=pos",
		"SESSIOND_CASHIER_PIN=" + pin,
	}
}
