package localapi

import (
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// readPeerCred reads the peer's uid, gid and pid (SO_PEERCRED) and its
// supplementary groups (SO_PEERGROUPS, Linux 4.13+) from a Unix connection,
// as they were when the peer connected.
func readPeerCred(c net.Conn) connInfo {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return connInfo{}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return connInfo{}
	}
	var ci connInfo
	cerr := raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			return
		}
		ci = connInfo{ok: true, uid: cred.Uid, gid: cred.Gid, pid: uint32(cred.Pid), groups: peerGroups(fd)}
	})
	if cerr != nil {
		return connInfo{}
	}
	return ci
}

// peerGroups returns the peer's supplementary groups, or nil when the kernel
// cannot say.
func peerGroups(fd uintptr) []uint32 {
	groups := make([]uint32, 32)
	for range 2 {
		size := uint32(len(groups) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&groups[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch errno {
		case 0:
			return groups[:size/4]
		case unix.ERANGE:
			// size now holds the length needed; NGROUPS_MAX is 65536.
			if size/4 > 65536 {
				return nil
			}
			groups = make([]uint32, size/4+1)
		default:
			return nil
		}
	}
	return nil
}
