package pool

import (
	"errors"
	"time"

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
