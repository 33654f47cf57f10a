package erplytest

import (
	"crypto/rand"
	"encoding/hex"
	"maps"
	"time"
)

// Login blocking, as Erply does it: after maxFailures wrong passwords within
// failureWindow (with no success between) the user is refused for blockFor.
const (
	maxFailures   = 5
	failureWindow = 15 * time.Minute
	blockFor      = 30 * time.Minute
	// switchWindow is how long after expiry a key may still be a switchUser parent.
	switchWindow = 2 * time.Hour
)

// Account is one Erply account (client code) of the fake. Its methods are
// safe for concurrent use.
type Account struct {
	s          *Server
	clientCode string
	users      map[string]*userState
	order      []string // user names in the order added, for PIN lookup
	endpoints  map[string][]map[string]any
}

// User is an Erply user of an account. Password or PIN may be empty: a user
// without a password cannot verifyUser (1053), one without a PIN cannot be
// switched to.
type User struct {
	Username     string
	Password     string
	PIN          string
	UserID       int
	EmployeeID   int
	EmployeeName string
	GroupID      int
	GroupName    string
}

type userState struct {
	User
	failures     []time.Time // recent wrong passwords, oldest first
	blockedUntil time.Time
	timesBlocked int
	// passwordExpired is sent as isPasswordExpired in the user's login
	// replies until a changePassword call changes the password.
	passwordExpired bool
}

// blocked reports whether the user is blocked at now, ending an elapsed block.
func (u *userState) blocked(now time.Time) bool {
	if u.blockedUntil.IsZero() {
		return false
	}
	if now.Before(u.blockedUntil) {
		return true
	}
	u.blockedUntil = time.Time{}
	u.failures = nil
	return false
}

// fail records a wrong password at now and starts a block when there have
// been maxFailures within failureWindow.
func (u *userState) fail(now time.Time) {
	keep := u.failures[:0]
	for _, t := range u.failures {
		if now.Sub(t) < failureWindow {
			keep = append(keep, t)
		}
	}
	u.failures = append(keep, now)
	if len(u.failures) >= maxFailures {
		u.blockedUntil = now.Add(blockFor)
		u.timesBlocked++
	}
}

type session struct {
	key        string
	clientCode string
	username   string
	created    time.Time
	expires    time.Time
	length     int64 // seconds granted
	deleted    bool
}

func (ss *session) live(now time.Time) bool { return !ss.deleted && now.Before(ss.expires) }

type oauthToken struct {
	clientCode string
	username   string
	expires    time.Time
}

// AddAccount adds an account with the default endpoint lists and no users,
// or returns the existing account with that client code.
func (s *Server) AddAccount(clientCode string) *Account {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.accounts[clientCode]; ok {
		return a
	}
	a := &Account{s: s, clientCode: clientCode, users: make(map[string]*userState), endpoints: DefaultEndpoints()}
	s.accounts[clientCode] = a
	return a
}

// ClientCode returns the account's client code.
func (a *Account) ClientCode() string { return a.clientCode }

// AddUser adds u to the account, replacing (and unblocking) any user with the
// same user name. Existing sessions of that user stay valid.
func (a *Account) AddUser(u User) {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if _, ok := a.users[u.Username]; !ok {
		a.order = append(a.order, u.Username)
	}
	a.users[u.Username] = &userState{User: u}
}

// SetEndpoints replaces the endpoint lists sent in every login reply and
// getSessionKeyUser, keyed by field name (customerRegistryURLs, …). A nil or
// empty list is sent as []; lists absent from eps are not sent at all. The
// records are copied; their values must be JSON-encodable.
func (a *Account) SetEndpoints(eps map[string][]map[string]any) {
	cp := make(map[string][]map[string]any, len(eps))
	for name, list := range eps {
		l := make([]map[string]any, 0, len(list))
		for _, rec := range list {
			l = append(l, maps.Clone(rec))
		}
		cp[name] = l
	}
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	a.endpoints = cp
}

// DefaultEndpoints returns the endpoint lists a new account sends: lists of
// both shapes ({url, token, priority, weight} and {target, port, priority,
// weight}) with several priorities and weights, zero weights, one list whose
// numbers arrive as strings (transactionRegistryURLs, as loosely typed real
// replies do) and one empty list (couponRegistryURLs).
func DefaultEndpoints() map[string][]map[string]any {
	return map[string][]map[string]any{
		"customerRegistryURLs": {
			{"url": "https://cr-a.example/", "token": "t1", "priority": 10, "weight": 60},
			{"url": "https://cr-b.example/", "token": "t2", "priority": 10, "weight": 30},
			{"url": "https://cr-c.example/", "token": "t3", "priority": 20, "weight": 0},
		},
		"transactionRegistryURLs": {
			{"url": "https://tr-a.example/", "token": "t4", "priority": "0", "weight": "0"},
			{"url": "https://tr-b.example/", "token": "t5", "priority": "0", "weight": "5"},
			{"url": "https://tr-c.example/", "token": "t6", "priority": "1", "weight": "1"},
		},
		"cayanGatewayURLs": {
			{"target": "cayan1.example", "port": 443, "priority": 0, "weight": 10},
			{"target": "cayan2.example", "port": 8443, "priority": 0, "weight": 5},
			{"target": "cayan3.example", "port": 443, "priority": 1, "weight": 1},
		},
		"pusherAuthenticationURLs": {
			{"target": "pusher.example", "port": 443, "priority": 0, "weight": 0},
		},
		"couponRegistryURLs": {},
	}
}

// SeedDemo adds the demo account: a manager who logs in with a password and
// a cashier who has only a PIN (for switchUser on top of the manager's
// session). It returns the account's client code, the manager's user name and
// password, and the cashier's PIN. Calling it again resets those users.
func (s *Server) SeedDemo() (clientCode, username, password, pin string) {
	clientCode, username, password, pin = "104729", "manager@demo.example", "demo-manager-pw", "4711"
	a := s.AddAccount(clientCode)
	a.AddUser(User{Username: username, Password: password, UserID: 6, EmployeeID: 5,
		EmployeeName: "Maria Manager", GroupID: 1, GroupName: "Administrators"})
	a.AddUser(User{Username: "cashier@demo.example", PIN: pin, UserID: 7, EmployeeID: 8,
		EmployeeName: "Carl Cashier", GroupID: 3, GroupName: "Cashiers"})
	return clientCode, username, password, pin
}

// newSessionLocked creates a session expiring at expires. s.mu is held.
func (s *Server) newSessionLocked(clientCode, username string, now, expires time.Time) *session {
	var b [20]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	ss := &session{
		key:        hex.EncodeToString(b[:]),
		clientCode: clientCode,
		username:   username,
		created:    now,
		expires:    expires,
		length:     expires.Unix() - now.Unix(),
	}
	s.sessions[ss.key] = ss
	return ss
}

// SessionValid reports whether key exists, was not deleted and has not
// expired at the clock's current time.
func (s *Server) SessionValid(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.sessions[key]
	return ok && ss.live(s.clk.Now())
}

// ExpireSession makes key expire now (later calls get 1054; switchUser still
// accepts it for 2 h). An unknown key is ignored.
func (s *Server) ExpireSession(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss, ok := s.sessions[key]; ok {
		if now := s.clk.Now(); ss.expires.After(now) {
			ss.expires = now
		}
	}
}

// DeleteSession deletes key, as Erply does on a password change: later calls,
// switchUser included, get 1054. An unknown key is ignored.
func (s *Server) DeleteSession(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss, ok := s.sessions[key]; ok {
		ss.deleted = true
	}
}

// DeleteUserSessions deletes every session of a user. It panics if the user
// does not exist, so that a mistyped name cannot make a test pass.
func (s *Server) DeleteUserSessions(clientCode, username string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mustUserLocked(clientCode, username)
	s.deleteUserSessionsLocked(clientCode, username, "")
}

// ChangePassword changes a user's password as an administrator would:
// every session of the user is deleted and any login block is lifted. It
// panics if the user does not exist.
func (s *Server) ChangePassword(clientCode, username, newPassword string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.mustUserLocked(clientCode, username)
	u.Password = newPassword
	u.failures, u.blockedUntil = nil, time.Time{}
	s.deleteUserSessionsLocked(clientCode, username, "")
}

// SetPasswordExpired sets whether the user's login replies say
// isPasswordExpired, as an account with password rotation does when the
// password is due; a successful changePassword call clears it. It panics if
// the user does not exist.
func (s *Server) SetPasswordExpired(clientCode, username string, expired bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mustUserLocked(clientCode, username).passwordExpired = expired
}

// Password returns the user's current password, so that a test can see
// what a changePassword call set. It panics if the user does not exist.
func (s *Server) Password(clientCode, username string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mustUserLocked(clientCode, username).Password
}

// Sessions returns how many live sessions a user has.
func (s *Server) Sessions(clientCode, username string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clk.Now()
	n := 0
	for _, ss := range s.sessions {
		if ss.clientCode == clientCode && ss.username == username && ss.live(now) {
			n++
		}
	}
	return n
}

// TimesBlocked counts the blocks a user has had since the account was made.
func (s *Server) TimesBlocked(clientCode, username string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mustUserLocked(clientCode, username).timesBlocked
}

// Blocked reports whether the user is blocked now.
func (s *Server) Blocked(clientCode, username string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.userLocked(clientCode, username)
	return u != nil && u.blocked(s.clk.Now())
}

// IssueIdentityToken returns an Identity JWT for a user, valid for ttl on
// the clock, as the Identity service would issue it. The user need not
// exist (verifyIdentityToken then answers 1173).
func (s *Server) IssueIdentityToken(clientCode, username string, ttl time.Duration) string {
	now := s.clk.Now()
	return signJWT(jwtKey, claims{
		Issuer: issuerIdentity, Subject: username, Username: username, ClientCode: clientCode,
		IssuedAt: now.Unix(), Expires: now.Add(ttl).Unix(),
	})
}

// IssueOAuthToken returns an SSO id token for a user, valid for ttl on the
// clock, and registers it so that verifyOAuthToken accepts it. The user need
// not exist (verifyOAuthToken then answers 1173).
func (s *Server) IssueOAuthToken(clientCode, username string, ttl time.Duration) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clk.Now()
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	tok := signJWT(ssoKey, claims{
		Issuer: issuerSSO, Subject: username, Mail: username, Roles: []string{"pos"},
		ClientCode: clientCode, IssuedAt: now.Unix(), Expires: now.Add(ttl).Unix(),
		ID: hex.EncodeToString(nonce[:]),
	})
	s.oauth[tok] = oauthToken{clientCode: clientCode, username: username, expires: now.Add(ttl)}
	return tok
}

func (s *Server) userLocked(clientCode, username string) *userState {
	a, ok := s.accounts[clientCode]
	if !ok {
		return nil
	}
	return a.users[username]
}

func (s *Server) mustUserLocked(clientCode, username string) *userState {
	u := s.userLocked(clientCode, username)
	if u == nil {
		panic("erplytest: no user " + username + " in account " + clientCode)
	}
	return u
}

// deleteUserSessionsLocked deletes the user's sessions except keep.
func (s *Server) deleteUserSessionsLocked(clientCode, username, keep string) {
	for _, ss := range s.sessions {
		if ss.clientCode == clientCode && ss.username == username && ss.key != keep {
			ss.deleted = true
		}
	}
}
