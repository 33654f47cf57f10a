package localapi

import (
	"bytes"
	"encoding/json"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
)

// rendered is a snapshot with its answers prepared, so that the hot routes
// write bytes without encoding anything. Immutable but for body.
type rendered struct {
	snap *pool.Snapshot
	// validUntil is ExpiresAt minus the margin: the key is served from here
	// while now is before it (the same test as Snapshot.Valid).
	validUntil time.Time
	hasSession bool

	key, token, identityToken []byte // value + "\n"; token ones nil when absent

	// The session JSON around its one changing field, expiresIn.
	prefix, suffix []byte
	// body is the whole JSON for one value of expiresIn, re-rendered at most
	// about once a second.
	body atomic.Pointer[timedBody]
}

type timedBody struct {
	expiresIn int64
	b         []byte
}

// sessionJSON is the answer of GET /v1/sessions/{name} and of invalidate.
type sessionJSON struct {
	Name          string `json:"name"`
	ClientCode    string `json:"clientCode"`
	APIURL        string `json:"apiURL"`
	SessionKey    string `json:"sessionKey"`
	ExpiresAt     string `json:"expiresAt"`
	ExpiresIn     int64  `json:"expiresIn"`
	UserID        int64  `json:"userID"`
	UserName      string `json:"userName"`
	EmployeeID    int64  `json:"employeeID"`
	EmployeeName  string `json:"employeeName"`
	GroupID       int64  `json:"groupID"`
	GroupName     string `json:"groupName"`
	Token         string `json:"token"`
	IdentityToken string `json:"identityToken"`
	// PasswordExpired is the login reply's isPasswordExpired.
	PasswordExpired bool `json:"passwordExpired"`
}

// expiresInMark is a value no session has, found again to split the JSON.
const expiresInMark = -7239184723918472391

var expiresInField = []byte(`"expiresIn":` + strconv.FormatInt(expiresInMark, 10))

// render prepares a snapshot's answers.
func (s *Server) render(snap *pool.Snapshot) *rendered {
	rd := &rendered{snap: snap}
	sess := snap.Session
	if sess == nil || sess.SessionKey == "" {
		return rd
	}
	rd.hasSession = true
	rd.validUntil = snap.ExpiresAt.Add(-s.sessions.MarginOf(snap))
	rd.key = line(sess.SessionKey)
	rd.token = line(sess.Token)
	rd.identityToken = line(sess.IdentityToken)

	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	// Encoding a struct of strings and integers cannot fail.
	_ = enc.Encode(sessionJSON{
		Name:            snap.Name,
		ClientCode:      snap.ClientCode,
		APIURL:          config.RedactURL(snap.APIURL),
		SessionKey:      sess.SessionKey,
		ExpiresAt:       snap.ExpiresAt.UTC().Format(time.RFC3339),
		ExpiresIn:       expiresInMark,
		UserID:          sess.UserID,
		UserName:        sess.UserName,
		EmployeeID:      sess.EmployeeID,
		EmployeeName:    sess.EmployeeName,
		GroupID:         sess.GroupID,
		GroupName:       sess.GroupName,
		Token:           sess.Token,
		IdentityToken:   sess.IdentityToken,
		PasswordExpired: sess.PasswordExpired,
	})
	// Strings are escaped, so the unquoted field name occurs only as the key.
	b := buf.Bytes()
	i := bytes.Index(b, expiresInField)
	rd.prefix = b[:i+len(`"expiresIn":`)]
	rd.suffix = b[i+len(expiresInField):]
	return rd
}

func line(v string) []byte {
	if v == "" {
		return nil
	}
	return []byte(v + "\n")
}

// valid reports whether the key may be served at now.
func (rd *rendered) valid(now time.Time) bool {
	return rd.hasSession && now.Before(rd.validUntil)
}

// sessionBody returns the session JSON with expiresIn (whole seconds) as of now.
func (rd *rendered) sessionBody(now time.Time) []byte {
	in := int64(rd.snap.ExpiresAt.Sub(now) / time.Second)
	if tb := rd.body.Load(); tb != nil && tb.expiresIn == in {
		return tb.b
	}
	b := make([]byte, 0, len(rd.prefix)+20+len(rd.suffix))
	b = append(b, rd.prefix...)
	b = strconv.AppendInt(b, in, 10)
	b = append(b, rd.suffix...)
	rd.body.Store(&timedBody{expiresIn: in, b: b})
	return b
}

// cache holds the latest rendering of every credential. Readers load the
// name map and an entry's pointer atomically and take no lock; the mutex only
// orders writers (the pool's callbacks and the initial seeding).
type cache struct {
	render func(*pool.Snapshot) *rendered

	names atomic.Pointer[map[string]*atomic.Pointer[rendered]]

	mu sync.Mutex
	// seeding, while non-nil, records names the subscription updated during
	// the initial seeding, whose seeded snapshot would be older.
	seeding map[string]bool
}

func (c *cache) init(render func(*pool.Snapshot) *rendered) {
	c.render = render
	m := map[string]*atomic.Pointer[rendered]{}
	c.names.Store(&m)
	c.seeding = map[string]bool{}
}

// lookup returns a credential's latest rendering, or nil if it is not known.
func (c *cache) lookup(name string) *rendered {
	if p := (*c.names.Load())[name]; p != nil {
		return p.Load()
	}
	return nil
}

// update records a new snapshot: a newer version replaces the rendering, a
// removal drops the name.
func (c *cache) update(snap *pool.Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seeding != nil {
		c.seeding[snap.Name] = true
	}
	c.apply(snap)
}

// seed stores snapshots read after subscribing, except for names the
// subscription has already updated meanwhile.
func (c *cache) seed(snaps []*pool.Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, snap := range snaps {
		if snap != nil && !c.seeding[snap.Name] {
			c.apply(snap)
		}
	}
	c.seeding = nil
}

func (c *cache) apply(snap *pool.Snapshot) {
	old := *c.names.Load()
	p := old[snap.Name]
	switch {
	case snap.Removed:
		if p == nil {
			return
		}
		m := make(map[string]*atomic.Pointer[rendered], len(old))
		for k, v := range old {
			if k != snap.Name {
				m[k] = v
			}
		}
		c.names.Store(&m)
	case p == nil:
		p = new(atomic.Pointer[rendered])
		p.Store(c.render(snap))
		m := make(map[string]*atomic.Pointer[rendered], len(old)+1)
		for k, v := range old {
			m[k] = v
		}
		m[snap.Name] = p
		c.names.Store(&m)
	default:
		// Snapshots of one credential may be published from different
		// goroutines; never go back to an older version.
		if cur := p.Load(); cur != nil && cur.snap.Version > snap.Version {
			return
		}
		p.Store(c.render(snap))
	}
}

// onSnapshot is the pool subscription: it keeps the cache current and, when
// a credential is removed, forgets its endpoints' down marks.
func (s *Server) onSnapshot(snap *pool.Snapshot) {
	if snap == nil {
		return
	}
	s.cache.update(snap)
	if snap.Removed {
		s.downs.Forget(snap.Name + "/")
	}
}
