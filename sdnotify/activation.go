package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// SocketName is the FileDescriptorName= of the daemon's socket in
// erply-sessiond.socket: the name to give Pick.
const SocketName = "sessiond"

// Listeners returns the listening sockets the service manager passed to this
// process (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES; sd_listen_fds(3)), in
// order, with their names: the socket unit's FileDescriptorName=, or
// "LISTEN_FD_<n>" for an unnamed one. It returns no listeners and no error
// when the process was not socket-activated, including when LISTEN_PID names
// another process. With unsetEnv the LISTEN_* variables are removed, so that
// no child process mistakes the sockets for its own.
//
// Unlike the rest of the daemon this reads the process environment itself
// (through go-systemd's activation.Files): the protocol is a contract between
// the service manager and this very process — the variables are only
// meaningful together with the inherited descriptors and os.Getpid — so there
// is nothing a caller could usefully substitute.
//
// A passed descriptor that is not a listening stream socket (a datagram
// socket, a regular file, or a connection from a socket unit with Accept=yes)
// is an error naming it; every descriptor is then closed.
func Listeners(unsetEnv bool) ([]net.Listener, []string, error) {
	files := activation.Files(unsetEnv)
	listeners := make([]net.Listener, 0, len(files))
	names := make([]string, 0, len(files))
	var errs []error
	for i, f := range files {
		l, err := fileListener(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("socket activation: fd %d (%s): %w", i+3, f.Name(), err))
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
