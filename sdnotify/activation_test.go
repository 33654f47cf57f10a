package sdnotify

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// childEnv makes the test binary act as a socket-activated daemon
// (see TestMain). LISTEN_PID must equal the activated process's pid, which
// the parent cannot know before exec; systemd sets it in the forked child
// just before exec, so the child here answers it itself when childOwnPID is set.
const (
	childEnv    = "SDNOTIFY_TEST_ACTIVATION_CHILD"
	childOwnPID = "SDNOTIFY_TEST_SET_LISTEN_PID"
)

// childReport is what the activated child saw, printed as JSON on stdout.
type childReport struct {
	Names        []string
	Err          string
	Picked       string
	OthersClosed bool // every listener Pick did not choose was closed
	Served       bool
}

// activationChild runs in the re-executed test binary: it takes the
// inherited sockets, serves one connection on the picked one, then reports.
func activationChild() int {
	getenv := os.Getenv
	if os.Getenv(childOwnPID) != "" {
		getenv = func(k string) string {
			if k == "LISTEN_PID" {
				return strconv.Itoa(os.Getpid())
			}
			return os.Getenv(k)
		}
	}
	var r childReport
	ls, names, err := Listeners(getenv)
	r.Names = names
	if err != nil {
		r.Err = err.Error()
	}
	l, name := Pick(ls, names, SocketName)
	r.Picked = name
	r.OthersClosed = true
	for _, o := range ls {
		if o == l {
			continue
		}
		if _, err := o.Accept(); !errors.Is(err, net.ErrClosed) {
			r.OthersClosed = false
		}
	}
	if l != nil {
		conn, err := l.Accept()
		if err != nil {
			r.Err = "accept: " + err.Error()
		} else {
			fmt.Fprintf(conn, "served by %s\n", name)
			conn.Close()
			r.Served = true
		}
		l.Close()
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return 2
	}
	return 0
}

type passedSocket struct {
	file   *os.File
	dialNW string // network and address the parent dials to reach it
	dialTo string
}

func unixListener(t *testing.T, name string) passedSocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return passedSocket{file: f, dialNW: "unix", dialTo: path}
}

func tcpListener(t *testing.T) passedSocket {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return passedSocket{file: f, dialNW: "tcp", dialTo: l.Addr().String()}
}

func datagramSocket(t *testing.T) passedSocket {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "dgram"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return passedSocket{file: f}
}

// connectedSocket is what a socket unit with Accept=yes would pass.
func connectedSocket(t *testing.T) passedSocket {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	t.Cleanup(func() { a.Close(); b.Close() })
	return passedSocket{file: a}
}

func regularFile(t *testing.T) passedSocket {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "plain"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return passedSocket{file: f}
}

func TestListenersFromSocketActivation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sockets func(t *testing.T) []passedSocket
		fdNames string // LISTEN_FDNAMES; unset when empty
		ownPID  bool   // false: LISTEN_PID names another process (the parent)
		// want: names returned, the one picked and which socket serves.
		wantNames  []string
		wantPicked string
		wantServe  int // index into sockets, -1: nothing served
		wantErr    []string
	}{
		{
			name:      "socket unit with one named socket",
			sockets:   func(t *testing.T) []passedSocket { return []passedSocket{unixListener(t, "s.sock")} },
			fdNames:   "sessiond",
			ownPID:    true,
			wantNames: []string{"sessiond"}, wantPicked: "sessiond", wantServe: 0,
		},
		{
			name: "picks the socket named sessiond",
			sockets: func(t *testing.T) []passedSocket {
				return []passedSocket{unixListener(t, "a.sock"), unixListener(t, "b.sock")}
			},
			fdNames:   "metrics:sessiond",
			ownPID:    true,
			wantNames: []string{"metrics", "sessiond"}, wantPicked: "sessiond", wantServe: 1,
		},
		{
			name: "first socket when none is named sessiond",
			sockets: func(t *testing.T) []passedSocket {
				return []passedSocket{tcpListener(t), unixListener(t, "b.sock")}
			},
			ownPID:    true,
			wantNames: []string{"LISTEN_FD_3", "LISTEN_FD_4"}, wantPicked: "LISTEN_FD_3", wantServe: 0,
		},
		{
			name:      "sockets meant for another process",
			sockets:   func(t *testing.T) []passedSocket { return []passedSocket{unixListener(t, "s.sock")} },
			fdNames:   "sessiond",
			ownPID:    false,
			wantNames: []string{}, wantServe: -1,
		},
		{
			name: "datagram socket, Accept=yes connection and plain file are refused",
			sockets: func(t *testing.T) []passedSocket {
				return []passedSocket{unixListener(t, "s.sock"), datagramSocket(t), connectedSocket(t), regularFile(t)}
			},
			fdNames:   "sessiond:dgram:conn:file",
			ownPID:    true,
			wantServe: -1,
			wantErr: []string{
				"fd 4 (dgram): not a stream socket",
				"fd 5 (conn): not a listening socket",
				"fd 6 (file): not a socket",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socks := tc.sockets(t)
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"=1", "LISTEN_FDS="+strconv.Itoa(len(socks)), "LISTEN_FDNAMES="+tc.fdNames)
			if tc.ownPID {
				cmd.Env = append(cmd.Env, childOwnPID+"=1")
			} else {
				cmd.Env = append(cmd.Env, "LISTEN_PID="+strconv.Itoa(os.Getpid()))
			}
			for _, s := range socks {
				cmd.ExtraFiles = append(cmd.ExtraFiles, s.file)
			}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if cmd.ProcessState == nil {
					cmd.Process.Kill()
					cmd.Wait()
				}
			}()

			if tc.wantServe >= 0 {
				s := socks[tc.wantServe]
				conn, err := net.DialTimeout(s.dialNW, s.dialTo, hangGuard)
				if err != nil {
					t.Fatal(err)
				}
				conn.SetDeadline(time.Now().Add(hangGuard))
				line, err := bufio.NewReader(conn).ReadString('\n')
				conn.Close()
				if err != nil {
					t.Fatalf("no answer through the activated socket: %v (child stderr: %s)", err, stderr.String())
				}
				if want := "served by " + tc.wantPicked + "\n"; line != want {
					t.Fatalf("answer = %q, want %q", line, want)
				}
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("child: %v\nstderr: %s", err, stderr.String())
			}

			var r childReport
			if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
				t.Fatalf("child report %q: %v", stdout.String(), err)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(r.Err, want) {
					t.Errorf("error %q lacks %q", r.Err, want)
				}
			}
			if len(tc.wantErr) == 0 && r.Err != "" {
				t.Errorf("unexpected error: %s", r.Err)
			}
			if len(tc.wantErr) > 0 && len(r.Names) != 0 {
				t.Errorf("names %q returned along with an error", r.Names)
			}
			if tc.wantNames != nil && strings.Join(r.Names, ":") != strings.Join(tc.wantNames, ":") {
				t.Errorf("names = %q, want %q", r.Names, tc.wantNames)
			}
			if r.Picked != tc.wantPicked {
				t.Errorf("picked %q, want %q", r.Picked, tc.wantPicked)
			}
			if !r.OthersClosed {
				t.Error("Pick left a listener it did not choose open")
			}
			// The socket unit owns the socket: the daemon closing its
			// listener must not remove the file.
			for _, s := range socks {
				if s.dialNW != "unix" {
					continue
				}
				if _, err := os.Lstat(s.dialTo); err != nil {
					t.Errorf("inherited socket file removed by the activated process: %v", err)
				}
			}
		})
	}
}

func TestPick(t *testing.T) {
	if l, name := Pick(nil, nil, "sessiond"); l != nil || name != "" {
		t.Fatalf("Pick(nothing) = %v %q, want nil \"\"", l, name)
	}
}
