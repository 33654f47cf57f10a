package upstream

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// Erply error codes the daemon acts on.
const (
	CodeMaintenance      = 1000
	CodeQuotaExceeded    = 1002
	CodeMissingParameter = 1010
	CodeSameValue        = 1012
	CodeInvalidValue     = 1016
	CodeLoginMissing     = 1050
	CodeLoginFailed      = 1051
	CodeUserBlocked      = 1052
	CodeLoginRefused     = 1053
	CodeSessionExpired   = 1054
	CodeSessionInvalid   = 1055
	CodeSessionTooOld    = 1056
	CodePINNotSupported  = 1058
	CodeNoUserGroup      = 1059
	CodeNoAPIAccess      = 1065
)

// Families of failures that callers act on. Test with errors.Is(err, upstream.ErrLoginRefused).
var (
	// ErrLoginRefused: 1050–1053. Never retry quickly: Erply blocks the user.
	ErrLoginRefused = errors.New("login refused")
	// ErrSessionInvalid: 1054/1055, the session key expired or is unknown.
	ErrSessionInvalid = errors.New("session expired or invalid")
	// ErrSessionTooOld: 1056, switchUser's parent key expired more than 2 h ago.
	ErrSessionTooOld = errors.New("session key too old to switch user")
	// ErrQuota: 1002, the account's hourly request quota is used up.
	ErrQuota = errors.New("hourly request quota exceeded")
	// ErrMaintenance: 1000, the API is under maintenance.
	ErrMaintenance = errors.New("API under maintenance")
	// ErrRateLimited: HTTP 429, the per-IP concurrency or rate limit was hit.
	ErrRateLimited = errors.New("rate limited")
	// ErrJWT: JWT and SSO configuration errors (1172, 1173, 1187, 1188, 1190, 1191, 1194).
	ErrJWT = errors.New("JWT or SSO error")
	// ErrBadRequest: 1010/1012/1016 bad parameters.
	ErrBadRequest = errors.New("bad request parameters")
	// ErrAccess: 1058/1059/1065, the user cannot use the API this way.
	ErrAccess = errors.New("no API access for this user")
	// ErrBadReply: the reply could not be understood (not JSON, too large, missing fields).
	ErrBadReply = errors.New("unreadable reply")
	// ErrUnavailable: network failure or HTTP 5xx after retries.
	ErrUnavailable = errors.New("Erply unavailable")
)

// Error is a failed Erply call. It never carries a secret: only the request
// name, the Erply code, errorField, and the HTTP status.
type Error struct {
	Request    string // Erply request name, e.g. "verifyUser"
	Code       int    // Erply errorCode; 0 for transport or HTTP failures
	Field      string // status.errorField, when Erply named one
	HTTPStatus int    // HTTP status when it was not 200
	// RetryAfter is how long Erply asked us to wait (Retry-After on 429), if known.
	RetryAfter time.Duration
	// Err is the underlying cause (a transport error, or ErrBadReply), if any.
	Err error
}

func (e *Error) Error() string {
	msg := "erply " + e.Request
	switch {
	case e.Code != 0:
		msg += ": error " + strconv.Itoa(e.Code)
		if f := familyOf(e.Code, e.HTTPStatus); f != nil {
			msg += " (" + f.Error() + ")"
		}
		if e.Field != "" {
			msg += ", field " + e.Field
		}
	case e.HTTPStatus != 0:
		msg += ": HTTP " + strconv.Itoa(e.HTTPStatus)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Is matches the family sentinels above.
func (e *Error) Is(target error) bool {
	f := familyOf(e.Code, e.HTTPStatus)
	if f != nil && f == target {
		return true
	}
	// A call the caller gave up on, or one that was never sent, says nothing
	// about Erply's health.
	if target == ErrUnavailable && e.Code == 0 && (e.HTTPStatus == 0 || e.HTTPStatus >= 500) &&
		!errors.Is(e.Err, ErrBadReply) && !errors.Is(e.Err, ErrBadRequest) && !errors.Is(e.Err, context.Canceled) {
		return true
	}
	return false
}

func familyOf(code, httpStatus int) error {
	switch code {
	case CodeLoginMissing, CodeLoginFailed, CodeUserBlocked, CodeLoginRefused:
		return ErrLoginRefused
	case CodeSessionExpired, CodeSessionInvalid:
		return ErrSessionInvalid
	case CodeSessionTooOld:
		return ErrSessionTooOld
	case CodeQuotaExceeded:
		return ErrQuota
	case CodeMaintenance:
		return ErrMaintenance
	case 1172, 1173, 1187, 1188, 1190, 1191, 1194:
		return ErrJWT
	case CodeMissingParameter, CodeSameValue, CodeInvalidValue:
		return ErrBadRequest
	case CodePINNotSupported, CodeNoUserGroup, CodeNoAPIAccess:
		return ErrAccess
	}
	if httpStatus == 429 {
		return ErrRateLimited
	}
	return nil
}

// CodeOf returns the Erply error code carried by err, or 0.
func CodeOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}
