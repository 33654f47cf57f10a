package proxy

import (
	"net/http"
	"strconv"
	"time"

	"github.com/erply-sessiond/erply-sessiond/localapi"
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

// sessionError answers a failed Sessions.Get or Invalidate the way every
// other route does (localapi.Classify).
func sessionError(err error) *proxyError {
	a := localapi.Classify(err)
	return &proxyError{status: a.Status, code: a.Code, message: a.Message, erplyCode: a.ErplyCode,
		retryAfter: a.RetryAfter, outcome: outcomeRejected}
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

func (e *proxyError) Error() string { return e.message }

// Answer makes a proxyError a localapi.Answerer: it is written like every
// other error of the API.
func (e *proxyError) Answer() localapi.Answer {
	return localapi.Answer{Status: e.status, Code: e.code, Message: e.message, ErplyCode: e.erplyCode, RetryAfter: e.retryAfter}
}

// fail answers e and records it on ex.
func (p *Proxy) fail(w http.ResponseWriter, ex *exchange, e *proxyError) {
	ex.outcome, ex.status, ex.erplyCode = e.outcome, e.status, e.erplyCode
	localapi.WriteError(w, e)
}
