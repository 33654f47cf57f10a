// Package answer owns how the local API and the proxy answer a request they cannot serve: the one error-answer type, the one mapping from errors to it, and how it is written.
package answer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Error is an answer that is not a success: the HTTP status, a stable code
// for programs, a message for people (never a secret or a form value), the
// Erply code when an Erply error is the cause, and with 503 how long to
// wait. Values are shared between requests: never change one after New.
type Error struct {
	Status     int
	Code       string
	Message    string
	ErplyCode  int
	RetryAfter time.Duration
}

// New returns the answer status, code, message with no Erply code and no wait.
func New(status int, code, message string) *Error {
	return &Error{Status: status, Code: code, Message: message}
}

func (e *Error) Error() string { return e.Message }

// BodyTooLarge is the answer to a request body over limit bytes.
func BodyTooLarge(limit int64) *Error {
	return New(http.StatusRequestEntityTooLarge, "body_too_large",
		"request body larger than "+strconv.FormatInt(limit, 10)+" bytes")
}

// Of maps err to its answer. An *Error in err's chain is the answer as it
// is; the pool's errors, an over-long body and a context that ended have
// fixed answers; anything else is 500 internal.
func Of(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, pool.ErrUnknownCredential) {
		return New(http.StatusNotFound, "unknown_credential", err.Error())
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return BodyTooLarge(tooLarge.Limit)
	}
	var un *pool.UnavailableError
	if errors.As(err, &un) {
		return &Error{Status: http.StatusServiceUnavailable, Code: "no_valid_session", Message: un.Error(),
			ErplyCode: upstream.CodeOf(err), RetryAfter: un.RetryAfter}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &Error{Status: http.StatusServiceUnavailable, Code: "no_valid_session",
			Message:   "no valid session yet: gave up waiting for the login",
			ErplyCode: upstream.CodeOf(err), RetryAfter: time.Second}
	}
	return &Error{Status: http.StatusInternalServerError, Code: "internal", Message: err.Error(), ErplyCode: upstream.CodeOf(err)}
}

// Headers that carry an answer's stable code and Erply code on text
// routes, whose body is only "error: message".
const (
	CodeHeader      = "X-Sessiond-Error"
	ErplyCodeHeader = "X-Sessiond-Erply-Code"
)

// Content types, shared so that setting one allocates nothing.
var (
	textPlain       = []string{"text/plain; charset=utf-8"}
	applicationJSON = []string{"application/json"}
)

type body struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	ErplyCode int    `json:"erplyCode,omitempty"`
}

// Write answers err as Of maps it: JSON {"error","message","erplyCode"}
// (erplyCode only when set) or, when text is set, "error: message\n" with
// the codes in CodeHeader and ErplyCodeHeader, so that text clients can act
// on them. A 503 carries Retry-After in whole seconds, at least 1.
func Write(w http.ResponseWriter, err error, text bool) {
	e := Of(err)
	h := w.Header()
	h.Del("Content-Length")
	if e.Status == http.StatusServiceUnavailable {
		h.Set("Retry-After", retryAfterSeconds(e.RetryAfter))
	}
	var b []byte
	if text {
		h.Set(CodeHeader, e.Code)
		if e.ErplyCode != 0 {
			h.Set(ErplyCodeHeader, strconv.Itoa(e.ErplyCode))
		}
		h["Content-Type"] = textPlain
		b = []byte("error: " + e.Message + "\n")
	} else {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false) // URLs in messages stay readable
		// A struct of strings and an int always encodes.
		_ = enc.Encode(body{Error: e.Code, Message: e.Message, ErplyCode: e.ErplyCode})
		h["Content-Type"] = applicationJSON
		b = buf.Bytes()
	}
	w.WriteHeader(e.Status)
	_, _ = w.Write(b)
}

// retryAfterSeconds rounds d up to whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) string {
	secs := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(secs, 1), 10)
}
