package proxy

import (
	"net/http"
	"time"

	"github.com/erply-sessiond/erply-sessiond/internal/answer"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Answers decided from the caller's request alone.
var (
	errMethod          = answer.New(http.StatusMethodNotAllowed, "method_not_allowed", "the proxy route takes POST only")
	errQueryNotAllowed = answer.New(http.StatusBadRequest, "query_not_allowed", "parameters go in the form body, never in the URL: remove the query string")
	errMediaType       = answer.New(http.StatusUnsupportedMediaType, "unsupported_media_type", "the body must be application/x-www-form-urlencoded")
	errReadBody        = answer.New(http.StatusBadRequest, "bad_body", "reading the request body failed")
	errBadForm         = answer.New(http.StatusBadRequest, "bad_form", "the body is not a valid urlencoded form")
	errMissingRequest  = answer.New(http.StatusBadRequest, "missing_request", "form field request (the Erply call name) is required")
	errNoSession       = &answer.Error{Status: http.StatusServiceUnavailable, Code: "no_valid_session",
		Message: "the credential has no valid session", RetryAfter: time.Second}
	errBusy = &answer.Error{Status: http.StatusServiceUnavailable, Code: codeBusy,
		Message: "too many calls in flight for this client code: gave up waiting for a free slot", RetryAfter: time.Second}
)

// Codes of the answers that are not counted as outcome "rejected".
const (
	codeBusy        = "proxy_busy"
	codeQuota       = "erply_quota_exceeded"
	codeRateLimited = "erply_rate_limited"
	codeUnreachable = "upstream_unreachable"
)

func callerSupplied(field string) *answer.Error {
	return answer.New(http.StatusBadRequest, "caller_supplied_session",
		"the body carries "+field+": the proxy adds clientCode and sessionKey itself, leave them out")
}

// pausedError answers a call for a client code that Erply told to wait.
func pausedError(why pauseReason, left time.Duration) *answer.Error {
	if why == pauseQuota {
		return &answer.Error{Status: http.StatusServiceUnavailable, Code: codeQuota,
			Message:   "Erply's hourly request quota for this client code is used up (error 1002): calls resume when the hour turns",
			ErplyCode: upstream.CodeQuotaExceeded, RetryAfter: left}
	}
	return &answer.Error{Status: http.StatusServiceUnavailable, Code: codeRateLimited,
		Message:    "Erply answered HTTP 429 (too many requests): calls for this client code are paused",
		RetryAfter: left}
}

// upstreamError answers a request that got no reply from Erply. It is never
// retried: the call may have reached Erply and may not be idempotent.
func upstreamError(cause error) *answer.Error {
	return answer.New(http.StatusBadGateway, codeUnreachable, "Erply did not answer: "+cause.Error())
}

// outcomeOf is the outcome label of a call the proxy answered itself.
func outcomeOf(e *answer.Error) string {
	switch e.Code {
	case codeBusy:
		return outcomeBusy
	case codeQuota, codeRateLimited:
		return outcomePaused
	case codeUnreachable:
		return outcomeUpstreamError
	}
	return outcomeRejected
}

// fail answers err (answer.Of maps it, as on every other route) and records
// it on ex.
func (p *Proxy) fail(w http.ResponseWriter, ex *exchange, err error) {
	e := answer.Of(err)
	ex.outcome, ex.status, ex.erplyCode = outcomeOf(e), e.Status, e.ErplyCode
	answer.Write(w, e, false)
}
