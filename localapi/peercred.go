package localapi

import (
	"context"
	"slices"

	"github.com/erply-sessiond/erply-sessiond/pool"
)

// connKey is the context key of a connection's *connInfo.
type connKey struct{}

// connInfo describes the client end of a connection, fixed when it is accepted.
type connInfo struct {
	tcp bool
	// ok reports whether the peer's credentials are known (Unix sockets only).
	ok       bool
	uid, gid uint32
	pid      uint32
	// groups are the peer's supplementary groups (SO_PEERGROUPS), when the
	// kernel reports them.
	groups []uint32
}

// unknownPeer is used for a request without connection information: treated
// as TCP, the most restricted case.
var unknownPeer = connInfo{tcp: true}

func peerOf(ctx context.Context) *connInfo {
	if ci, ok := ctx.Value(connKey{}).(*connInfo); ok {
		return ci
	}
	return &unknownPeer
}

// mayRead reports whether the peer may read a credential allowed to uids and
// gids. Both lists empty: anyone who can open the socket. Otherwise the peer
// must be known and its uid listed, or its primary or a supplementary group
// listed. Root and the daemon's own user are always allowed: they can read
// the daemon's memory and configuration anyway. TCP requests carry no peer,
// so on TCP only unrestricted credentials may be read (the listener is
// guarded by Options.TCPSessions, a loopback Host and RequestHeader).
func (s *Server) mayRead(ci *connInfo, snap *pool.Snapshot) bool {
	if len(snap.AllowUIDs) == 0 && len(snap.AllowGIDs) == 0 {
		return true
	}
	if ci.tcp {
		return false
	}
	if !ci.ok {
		return false
	}
	if ci.uid == 0 || ci.uid == s.selfUID || slices.Contains(snap.AllowUIDs, ci.uid) || slices.Contains(snap.AllowGIDs, ci.gid) {
		return true
	}
	for _, g := range ci.groups {
		if slices.Contains(snap.AllowGIDs, g) {
			return true
		}
	}
	return false
}
