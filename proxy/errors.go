package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// proxyError is an answer the proxy gives itself instead of Erply's: the
// HTTP status, a stable code for programs, a message for people (never a
// secret or a form value), the Erply code when an Erply error is the cause,
// for 503 how long to wait, and the outcome it is counted as.
type proxyError struct {
	status     int
	code       string
	message    string
	erplyCode  int
	retryAfter time.Duration
	outcome    string
}

func rejected(status int, code, message string) *proxyError {
	return &proxyError{status: status, code: code, message: message, outcome: outcomeRejected}
}

// Answers decided from the caller's request alone.
var (
	errMethod          = rejected(http.StatusMethodNotAllowed, "method_not_allowed", "the proxy route takes POST only")
	errQueryNotAllowed = rejected(http.StatusBadRequest, "query_not_allowed", "parameters go in the form body, never in the URL: remove the query string")
	errMediaType       = rejected(http.StatusUnsupportedMediaType, "unsupported_media_type", "the body must be application/x-www-form-urlencoded")
	errReadBody        = rejected(http.StatusBadRequest, "bad_body", "reading the request body failed")
	errBadForm         = rejected(http.StatusBadRequest, "bad_form", "the body is not a valid urlencoded form")
	errMissingRequest  = rejected(http.StatusBadRequest, "missing_request", "form field request (the Erply call name) is required")
	errNoSession       = &proxyError{status: http.StatusServiceUnavailable, code: "no_valid_session",
		message: "the credential has no valid session", retryAfter: time.Second, outcome: outcomeRejected}
	errBusy = &proxyError{status: http.StatusServiceUnavailable, code: "proxy_busy",
		message: "too many calls in flight for this client code: gave up waiting for a free slot", retryAfter: time.Second, outcome: outcomeBusy}
)

func bodyTooLarge(limit int64) *proxyError {
	return rejected(http.StatusRequestEntityTooLarge, "body_too_large",
		"request body larger than "+strconv.FormatInt(limit, 10)+" bytes")
}

func callerSupplied(field string) *proxyError {
	return rejected(http.StatusBadRequest, "caller_supplied_session",
		"the body carries "+field+": the proxy adds clientCode and sessionKey itself, leave them out")
}

// sessionError answers a failed Sessions.Get or Invalidate.
func sessionError(err error) *proxyError {
	if errors.Is(err, pool.ErrUnknownCredential) {
		return rejected(http.StatusNotFound, "unknown_credential", "unknown credential")
	}
	e := &proxyError{
		status:     http.StatusServiceUnavailable,
		code:       "no_valid_session",
		message:    err.Error(),
		erplyCode:  upstream.CodeOf(err),
		retryAfter: time.Second,
		outcome:    outcomeRejected,
	}
	var un *pool.UnavailableError
	if errors.As(err, &un) && un.RetryAfter > 0 {
		e.retryAfter = un.RetryAfter
	}
	return e
}

// pausedError answers a call for a client code that Erply told to wait.
func pausedError(why pauseReason, left time.Duration) *proxyError {
	if why == pauseQuota {
		return &proxyError{status: http.StatusServiceUnavailable, code: "erply_quota_exceeded",
			message:   "Erply's hourly request quota for this client code is used up (error 1002): calls resume when the hour turns",
			erplyCode: upstream.CodeQuotaExceeded, retryAfter: left, outcome: outcomePaused}
	}
	return &proxyError{status: http.StatusServiceUnavailable, code: "erply_rate_limited",
		message:    "Erply answered HTTP 429 (too many requests): calls for this client code are paused",
		retryAfter: left, outcome: outcomePaused}
}

// upstreamError answers a request that got no reply from Erply. It is never
// retried: the call may have reached Erply and may not be idempotent.
func upstreamError(cause error) *proxyError {
	return &proxyError{status: http.StatusBadGateway, code: "upstream_unreachable",
		message: "Erply did not answer: " + cause.Error(), outcome: outcomeUpstreamError}
}

// errorBody is the JSON shape of every error the local API answers.
type errorBody struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	ErplyCode int    `json:"erplyCode,omitempty"`
}

// fail answers e and records it on ex.
func (p *Proxy) fail(w http.ResponseWriter, ex *exchange, e *proxyError) {
	ex.outcome, ex.status, ex.erplyCode = e.outcome, e.status, e.erplyCode
	h := w.Header()
	if e.status == http.StatusServiceUnavailable {
		h.Set("Retry-After", retryAfterSeconds(e.retryAfter))
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(errorBody{Error: e.code, Message: e.message, ErplyCode: e.erplyCode}) // plain strings: cannot fail
	h.Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	_, _ = w.Write(buf.Bytes())
}

// retryAfterSeconds rounds d up to whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) string {
	secs := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(secs, 1), 10)
}
