package localapi

import (
	"net"
	"strconv"
	"sync"
	"time"
)

// peerKey is whose connection quota a connection counts against: its uid
// on the Unix socket ("unknown" when the kernel cannot say), and one
// shared quota for the TCP listener, whose peers have no credentials.
func peerKey(ci connInfo) string {
	switch {
	case ci.tcp:
		return "tcp"
	case ci.ok:
		return strconv.FormatUint(uint64(ci.uid), 10)
	}
	return "unknown"
}

// connLimits counts open connections by peer, so that one local user
// holding many (idle, or slow) connections cannot take the file
// descriptors and goroutines every other user's requests need.
type connLimits struct {
	max int

	mu     sync.Mutex
	open   map[string]int
	capped map[string]bool // peers refused since they were last under the cap: logged once
}

// acquire counts a new connection of peer; false when peer already holds
// max. first reports a refusal that begins a run of them (to be logged).
func (l *connLimits) acquire(peer string) (ok, first bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[peer] >= l.max {
		first = !l.capped[peer]
		l.capped[peer] = true
		return false, first
	}
	l.open[peer]++
	return true, false
}

func (l *connLimits) release(peer string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[peer]--; l.open[peer] <= 0 {
		delete(l.open, peer)
	}
	delete(l.capped, peer)
}

// limitedListener accepts connections within their peer's quota. A
// connection over it is answered 503 at once and closed, and Accept goes
// on to the next: the listener never stops for one peer's sake.
type limitedListener struct {
	net.Listener
	s   *Server
	tcp bool
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ci := connInfo{tcp: true}
		if !l.tcp {
			ci = l.s.peerCred(c)
		}
		peer := peerKey(ci)
		ok, first := l.s.conns.acquire(peer)
		if ok {
			return &limitedConn{Conn: c, ci: ci, release: func() { l.s.conns.release(peer) }}, nil
		}
		l.s.metrics.connsRefused.Inc()
		if first {
			l.s.log.Warn().Str("peer", peer).Int("limit", l.s.conns.max).
				Msg("a peer holds the most connections allowed to one user: refusing its new ones with 503 until it closes some")
		}
		refuse(c, l.s.conns.max)
	}
}

// refuse answers a connection over its peer's quota with a 503 it can read
// without sending anything, and closes it. The write goes into the
// socket's empty buffer: it does not block Accept.
func refuse(c net.Conn, limit int) {
	body := `{"error":"too_many_connections","message":"this user holds ` + strconv.Itoa(limit) +
		` connections to the daemon already; close idle ones or reuse them"}` + "\n"
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Write([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n" +
		"Connection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body))
	_ = c.Close()
}

// limitedConn gives its peer's quota back when closed, and carries the
// peer's credentials read at accept.
type limitedConn struct {
	net.Conn
	ci      connInfo
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
