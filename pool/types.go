package pool

import (
	"context"
	"errors"
	"time"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// State is a credential's condition as shown in /v1/sessions and /readyz.
type State string

// The credential states.
const (
	StateStarting   State = "starting"   // first login not finished yet
	StateOK         State = "ok"         // holds a valid session
	StateRefreshing State = "refreshing" // holds a valid session, a login is in flight
	StateFailing    State = "failing"    // holds a valid session, the last refresh failed
	StateExpired    State = "expired"    // no valid session (never got one, or it expired)
)

// Snapshot is an immutable view of one credential. A new Snapshot is made on
// every change; never modify one.
type Snapshot struct {
	Name       string
	Kind       string
	ClientCode string
	// APIURL is the credential's API URL with {clientCode} filled in.
	APIURL string
	// Session is the current session, nil when there is none.
	Session *upstream.Session
	// ExpiresAt is when Session expires, on the local wall clock (translated
	// from Erply's clock at login).
	ExpiresAt time.Time
	State     State
	// LastError is the last login failure (nil after a success). It never carries a secret.
	LastError error
	// Version increases by one each time the snapshot changes.
	Version uint64
	// AllowUIDs and AllowGIDs say who may read this credential over the
	// socket; both empty means anyone who can open the socket.
	AllowUIDs []uint32
	AllowGIDs []uint32
	// Removed is set on the last snapshot of a credential dropped by a reload.
	Removed bool
	// RefreshAt is when the next login is due: the refresh point, or the
	// retry after a failure (zero before the first attempt).
	RefreshAt time.Time
	// Logins counts the successful logins of this credential since the
	// daemon started (sessions installed from elsewhere are not logins).
	Logins uint64
}

// Valid reports whether the snapshot holds a session that stays valid for at
// least margin after now.
func (s *Snapshot) Valid(now time.Time, margin time.Duration) bool {
	return s != nil && s.Session != nil && s.Session.SessionKey != "" && now.Add(margin).Before(s.ExpiresAt)
}

// ErrUnknownCredential is returned for a name that is not configured.
var ErrUnknownCredential = errors.New("unknown credential")

// UnavailableError means the credential has no session valid for at least
// the safety margin and none could be had now.
type UnavailableError struct {
	Name string
	// Reason is the last login failure (an *upstream.Error, a config error, or a context error).
	Reason error
	// RetryAfter is when the next login attempt is due.
	RetryAfter time.Duration
}

func (e *UnavailableError) Error() string {
	msg := "credential " + e.Name + ": no valid session"
	if e.Reason != nil {
		msg += ": " + e.Reason.Error()
	}
	return msg
}

// Unwrap returns the reason.
func (e *UnavailableError) Unwrap() error { return e.Reason }

// Method makes a new session for a credential: one per way of logging in
// (verifyUser, switchUser, verifyIdentityToken, verifyOAuthToken), chosen
// for each credential when the pool is wired (Options.MethodFor), the way
// Vault Agent keeps each auth method behind one interface. The pool never
// looks at a credential's kind: it asks its Method.
type Method interface {
	// Login obtains a fresh session for cred. The returned session's
	// SessionLength is its lifetime in seconds as Erply measured it (> 0).
	// A credential made on top of another's session (a pin) gets it from
	// sessions and reports that parent key in the Grant. The error never
	// carries a secret.
	Login(ctx context.Context, cred config.Credential, sessions Sessions) (Grant, error)
}

// Sessions is what a Method may ask of the pool: another credential's
// session (a pin's parent), and compare-and-refresh of it when Erply says
// it is dead.
type Sessions interface {
	Get(ctx context.Context, name string) (*Snapshot, error)
	Invalidate(ctx context.Context, name, staleKey string) (*Snapshot, error)
}

// Grant is a new session on its way in: whatever made it (a login, a
// session restored from disk, one adopted from a fleet, the one
// changePassword returns), it is installed through one step.
type Grant struct {
	Session *upstream.Session
	// Obtained is the local instant the session's lifetime was measured
	// from (when the login began); zero means now.
	Obtained time.Time
	// ExpiresAt is the session's expiry on the local clock; zero means
	// Obtained plus Session.SessionLength seconds.
	ExpiresAt time.Time
	// ParentKey is, for a session made on top of another credential's (a
	// pin's switchUser), the parent session key it was made from.
	ParentKey string
	// Asked is the lifetime in seconds the login asked Erply for (0: it
	// could not ask). A reply claiming a longer one is not trusted past it,
	// nor past Erply's documented maximum.
	Asked int
	// Origin, set by a Method that hands over a session it did not log in
	// for (one adopted from a fleet), names where it came from: the pool
	// then installs it as it would through Install, not as a login of its
	// own. Empty for a login.
	Origin string
}

// Renewer fetches fresh JWTs for a credential's current session cur: fetch
// is the pool's own way (getJwtToken / getIdentityToken for cur's
// session); a Renewer may call it, or hand back the same session with JWTs
// obtained elsewhere (a fleet's), so that many daemons sharing a session
// renew its JWTs once. It returns cur's session with the new JWTs.
type Renewer interface {
	RenewJWT(ctx context.Context, cur *Snapshot, fetch func(context.Context) (*upstream.Session, error)) (*upstream.Session, error)
}
