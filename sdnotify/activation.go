package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// SocketName is the FileDescriptorName= of the daemon's socket in
// erply-sessiond.socket: the name to give Pick.
const SocketName = "sessiond"

// Listeners returns the listening sockets the service manager passed to this
// process (sd_listen_fds(3)), in order, with their names: the socket unit's
// FileDescriptorName=, or "LISTEN_FD_<n>" for an unnamed one. It reads
// LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES through getenv (the daemon passes
// a lookup in the environment main read once; tests pass their own), and
// returns no listeners and no error when the process was not
// socket-activated, including when LISTEN_PID names another process. The
// descriptors are marked close-on-exec. Clearing the variables from the
// process environment, so that no child mistakes the sockets for its own, is
// main's business: it alone touches the process environment.
//
// A passed descriptor that is not a listening stream socket (a datagram
// socket, a regular file, or a connection from a socket unit with Accept=yes)
// is an error naming it; every descriptor is then closed.
func Listeners(getenv func(string) string) ([]net.Listener, []string, error) {
	files := activationFiles(getenv)
	listeners := make([]net.Listener, 0, len(files))
	names := make([]string, 0, len(files))
	var errs []error
	for i, f := range files {
		l, err := fileListener(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("socket activation: fd %d (%s): %w", i+listenFDsStart, f.Name(), err))
			continue
		}
		listeners = append(listeners, l)
		names = append(names, f.Name())
	}
	if err := errors.Join(errs...); err != nil {
		for _, l := range listeners {
			_ = l.Close()
		}
		return nil, nil, err
	}
	return listeners, names, nil
}

// ActivationVars are the variables of the socket-activation protocol, which
// main clears from the process environment once it has read them.
var ActivationVars = []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}

// listenFDsStart is SD_LISTEN_FDS_START: the first passed descriptor.
const listenFDsStart = 3

// activationFiles is go-systemd's activation.Files with the variables read
// through getenv instead of the process environment.
func activationFiles(getenv func(string) string) []*os.File {
	pid, err := strconv.Atoi(getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil
	}
	n, err := strconv.Atoi(getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return nil
	}
	names := strings.Split(getenv("LISTEN_FDNAMES"), ":")
	files := make([]*os.File, 0, n)
	for fd := listenFDsStart; fd < listenFDsStart+n; fd++ {
		syscall.CloseOnExec(fd)
		name := "LISTEN_FD_" + strconv.Itoa(fd)
		if i := fd - listenFDsStart; i < len(names) && names[i] != "" {
			name = names[i]
		}
		files = append(files, os.NewFile(uintptr(fd), name))
	}
	return files
}

// fileListener turns an inherited descriptor into a net.Listener and closes
// the original descriptor (net.FileListener works on a duplicate).
func fileListener(f *os.File) (net.Listener, error) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var sotype, accepting int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		sotype, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		if serr == nil {
			accepting, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		}
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("not a socket: %w", serr)
	}
	if sotype != unix.SOCK_STREAM {
		return nil, errors.New("not a stream socket (the socket unit needs ListenStream=)")
	}
	if accepting == 0 {
		return nil, errors.New("not a listening socket (a socket unit with Accept=yes passes connections; erply-sessiond needs Accept=no)")
	}
	return net.FileListener(f)
}

// Pick chooses the listener to serve on from what Listeners returned: the one
// named want, or else the first. It closes every other listener, so that a
// stray socket in the unit does not hold connections nobody answers. It
// returns nil and "" when ls is empty.
func Pick(ls []net.Listener, names []string, want string) (net.Listener, string) {
	if len(ls) == 0 {
		return nil, ""
	}
	chosen := 0
	for i, name := range names {
		if name == want && i < len(ls) {
			chosen = i
			break
		}
	}
	for i, l := range ls {
		if i != chosen {
			_ = l.Close()
		}
	}
	name := ""
	if chosen < len(names) {
		name = names[chosen]
	}
	return ls[chosen], name
}
