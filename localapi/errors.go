package localapi

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

// apiError is an answer that is not a success: the HTTP status, a stable
// code for programs, a message for people (never a secret), the Erply code
// when an Erply error is the cause, and for 503 how long to wait.
type apiError struct {
	status     int
	code       string
	message    string
	erplyCode  int
	retryAfter time.Duration
}

func (e *apiError) Error() string { return e.message }

func newError(status int, code, message string) *apiError {
	return &apiError{status: status, code: code, message: message}
}

// Errors the API itself decides.
var (
	errUnknownCredential = newError(http.StatusNotFound, "unknown_credential", "unknown credential")
	errUnknownList       = newError(http.StatusNotFound, "unknown_list", "the session has no such endpoint list")
	errNoEndpoints       = newError(http.StatusNotFound, "no_endpoints", "the endpoint list is empty")
	errUnknownEndpoint   = newError(http.StatusNotFound, "unknown_endpoint", "no such endpoint in the list")
	errNotFound          = newError(http.StatusNotFound, "not_found", "no such route")
	errTCPNotFound       = newError(http.StatusNotFound, "not_found", "session routes are not served on the TCP listener")
	errMethod            = newError(http.StatusMethodNotAllowed, "method_not_allowed", "method not allowed on this route")
	errMissingHeader     = newError(http.StatusPreconditionFailed, "missing_header", "session routes on TCP require the header "+RequestHeader+": 1")
	errMissingKey        = newError(http.StatusBadRequest, "missing_key", "form or query field key (the stale session key) is required")
	errMissingTarget     = newError(http.StatusBadRequest, "missing_target", "form or query field url or target is required")
)

// errNoToken is the answer of a JWT route when the session carries no such token.
func errNoToken(what string) *apiError {
	return newError(http.StatusNotFound, "no_token", "the session has no "+what)
}

// errForbidden names the caller's uid (not a secret) so an operator can fix ALLOW_UIDS.
func errForbidden(ci *connInfo) *apiError {
	msg := "caller may not read this credential"
	if ci.ok {
		msg = "uid " + strconv.FormatUint(uint64(ci.uid), 10) + " may not read this credential"
	}
	return newError(http.StatusForbidden, "forbidden", msg)
}

// Answer is how the API answers an error: the HTTP status, a stable code for
// programs, a message for people (never a secret), the Erply code behind it
// and, with 503, how long to wait.
type Answer struct {
	Status     int
	Code       string
	Message    string
	ErplyCode  int
	RetryAfter time.Duration
}

// Answerer is an error that knows its own answer, such as the proxy's
// refusals; Classify uses it as it is.
type Answerer interface {
	error
	Answer() Answer
}

// Classify maps err to its answer: the one mapping from errors to statuses,
// shared by every route and by the proxy.
func Classify(err error) Answer {
	e := classify(err)
	return Answer{Status: e.status, Code: e.code, Message: e.message, ErplyCode: e.erplyCode, RetryAfter: e.retryAfter}
}

// WriteError answers err as the JSON error {"error","message","erplyCode"},
// with Retry-After on 503, as every JSON route does.
func WriteError(w http.ResponseWriter, err error) { writeError(w, err, false) }

// classify is the one place where errors become HTTP answers.
func classify(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var an Answerer
	if errors.As(err, &an) {
		a := an.Answer()
		return &apiError{status: a.Status, code: a.Code, message: a.Message, erplyCode: a.ErplyCode, retryAfter: a.RetryAfter}
	}
	if errors.Is(err, pool.ErrUnknownCredential) {
		return newError(http.StatusNotFound, "unknown_credential", err.Error())
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return newError(http.StatusRequestEntityTooLarge, "body_too_large",
			"request body larger than "+strconv.FormatInt(tooLarge.Limit, 10)+" bytes")
	}
	var un *pool.UnavailableError
	if errors.As(err, &un) {
		return &apiError{
			status:     http.StatusServiceUnavailable,
			code:       "no_valid_session",
			message:    un.Error(),
			erplyCode:  upstream.CodeOf(err),
			retryAfter: un.RetryAfter,
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &apiError{
			status:     http.StatusServiceUnavailable,
			code:       "no_valid_session",
			message:    "no valid session yet: gave up waiting for the login",
			erplyCode:  upstream.CodeOf(err),
			retryAfter: time.Second,
		}
	}
	return &apiError{status: http.StatusInternalServerError, code: "internal", message: err.Error(), erplyCode: upstream.CodeOf(err)}
}

// retryAfterSeconds rounds d up to whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) string {
	secs := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(secs, 1), 10)
}

// Headers that carry an error's stable code and Erply code on text routes,
// whose body is only "error: message".
const (
	ErrorCodeHeader = "X-Sessiond-Error"
	ErplyCodeHeader = "X-Sessiond-Erply-Code"
)

type errorBody struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	ErplyCode int    `json:"erplyCode,omitempty"`
}

// writeError answers err: JSON {"error","message","erplyCode"} or, on text
// routes, "error: message\n"; 503 carries Retry-After.
func writeError(w http.ResponseWriter, err error, text bool) {
	e := classify(err)
	h := w.Header()
	h.Del("Content-Length")
	if e.status == http.StatusServiceUnavailable {
		h.Set("Retry-After", retryAfterSeconds(e.retryAfter))
	}
	if text {
		// The stable code travels in a header, so text clients can act on it.
		h.Set(ErrorCodeHeader, e.code)
		if e.erplyCode != 0 {
			h.Set(ErplyCodeHeader, strconv.Itoa(e.erplyCode))
		}
		h["Content-Type"] = textPlain
		w.WriteHeader(e.status)
		_, _ = w.Write([]byte("error: " + e.message + "\n"))
		return
	}
	writeJSON(w, e.status, errorBody{Error: e.code, Message: e.message, ErplyCode: e.erplyCode})
}

// Content types, shared by every response so that setting one allocates nothing.
var (
	textPlain       = []string{"text/plain; charset=utf-8"}
	applicationJSON = []string{"application/json"}
)

// writeJSON answers v as JSON with a trailing newline, without escaping
// HTML characters (URLs stay readable).
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only programming errors get here: every value is a plain struct.
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":"internal","message":"encoding the answer failed"}` + "\n")
	}
	writeBody(w, status, applicationJSON, buf.Bytes())
}

func writeBody(w http.ResponseWriter, status int, contentType []string, b []byte) {
	w.Header()["Content-Type"] = contentType
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
