package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-retryablehttp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
)

// Defaults for the zero fields of Options.
const (
	DefaultRetryMax      = 3
	DefaultRetryWaitMin  = time.Second
	DefaultRetryWaitMax  = 30 * time.Second
	DefaultRateLimitWait = 10 * time.Second
	DefaultMaxReplyBytes = 4 << 20
	DefaultUserAgent     = "erply-sessiond"
	// DefaultAttemptTimeout bounds one HTTP attempt of Call with the default
	// HTTP client, so that a call without a deadline cannot hang for ever.
	DefaultAttemptTimeout = 30 * time.Second
	// DefaultDialTimeout and DefaultResponseHeaderTimeout bound connecting
	// (TLS included) and waiting for a reply's header on the default
	// transport, for Call and Post alike.
	DefaultDialTimeout           = 10 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
	// DefaultMaxIdleConnsPerHost keeps a connection for each request Erply
	// takes at once from one IP (about 10); each client code is one host.
	DefaultMaxIdleConnsPerHost = 10
)

// Options configure a Client. The zero value of every field picks its default.
type Options struct {
	// HTTPClient sends the requests of Call and Post. Default: a pooled
	// client (HTTPS_PROXY honoured, gzip asked for and decoded) with
	// DefaultDialTimeout, DefaultResponseHeaderTimeout,
	// DefaultMaxIdleConnsPerHost and a DefaultAttemptTimeout per attempt of
	// Call. Its Timeout bounds one attempt of Call; Post ignores it. A client
	// without a CheckRedirect policy gets one that does not follow redirects:
	// a redirected POST would carry a password or a session key to wherever
	// the redirect points.
	HTTPClient *http.Client
	// Logger gets one debug line per call and per retry; never a form value.
	Logger zerolog.Logger
	// RetryMax is how many times a failed call is retried when retrying is
	// safe (default 3; a negative value means never).
	RetryMax int
	// RetryWaitMin and RetryWaitMax bound the exponential backoff between
	// retries (defaults 1 s and 30 s).
	RetryWaitMin, RetryWaitMax time.Duration
	// RateLimitWait is the least wait after HTTP 429 (default 10 s); a larger
	// Retry-After wins. A call does not wait longer than the larger of this
	// and RetryWaitMax, nor past its context's deadline: it fails at once
	// instead, with Error.RetryAfter saying how long to wait.
	RateLimitWait time.Duration
	// MaxReplyBytes caps the size of a reply (default 4 MiB).
	MaxReplyBytes int64
	// Registerer, when set, gets the histogram
	// erply_sessiond_upstream_request_duration_seconds{request,result}.
	Registerer prometheus.Registerer
	// UserAgent is sent with every request, Call's and Post's (default
	// "erply-sessiond"); the daemon adds its version.
	UserAgent string
	// Clock is the local clock: it times calls and stands in for Erply's
	// clock where a reply does not carry it (default the system clock).
	Clock clock.Clock
}

// Client calls the Erply API. It is safe for concurrent use; make it with New.
type Client struct {
	http          *http.Client
	post          *http.Client // http without its per-attempt Timeout
	log           zerolog.Logger
	retryMax      int
	waitMin       time.Duration
	waitMax       time.Duration
	rateLimitWait time.Duration
	maxReply      int64
	userAgent     string
	clock         clock.Clock
	duration      *prometheus.HistogramVec // nil without a Registerer
}

// New returns a Client with opts' zero fields set to their defaults. It
// panics if opts.Registerer rejects the histogram for a reason other than it
// being registered already (a programming error, as with MustRegister); an
// already registered histogram is shared.
func New(opts Options) *Client {
	c := &Client{
		log:           opts.Logger.With().Str("component", "upstream").Logger(),
		retryMax:      opts.RetryMax,
		waitMin:       opts.RetryWaitMin,
		waitMax:       opts.RetryWaitMax,
		rateLimitWait: opts.RateLimitWait,
		maxReply:      opts.MaxReplyBytes,
		userAgent:     opts.UserAgent,
		clock:         opts.Clock,
	}
	if opts.HTTPClient == nil {
		c.http = defaultHTTPClient()
	} else {
		hc := *opts.HTTPClient
		c.http = &hc
	}
	if c.http.CheckRedirect == nil {
		c.http.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	post := *c.http
	post.Timeout = 0
	c.post = &post
	switch {
	case c.retryMax == 0:
		c.retryMax = DefaultRetryMax
	case c.retryMax < 0:
		c.retryMax = 0
	}
	if c.waitMin <= 0 {
		c.waitMin = DefaultRetryWaitMin
	}
	if c.waitMax <= 0 {
		c.waitMax = DefaultRetryWaitMax
	}
	c.waitMax = max(c.waitMax, c.waitMin)
	if c.rateLimitWait <= 0 {
		c.rateLimitWait = DefaultRateLimitWait
	}
	if c.maxReply <= 0 {
		c.maxReply = DefaultMaxReplyBytes
	}
	if c.userAgent == "" {
		c.userAgent = DefaultUserAgent
	}
	if c.clock == nil {
		c.clock = clock.Real{}
	}
	if opts.Registerer != nil {
		c.duration = registerHistogram(opts.Registerer)
	}
	return c
}

func defaultHTTPClient() *http.Client {
	tr := cleanhttp.DefaultPooledTransport()
	tr.DialContext = (&net.Dialer{Timeout: DefaultDialTimeout, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = DefaultDialTimeout
	tr.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	tr.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerHost
	return &http.Client{Transport: tr, Timeout: DefaultAttemptTimeout}
}

func registerHistogram(reg prometheus.Registerer) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "erply_sessiond_upstream_request_duration_seconds",
		Help: "Duration of Erply API calls, retries included, by request name and result " +
			`("ok", "erply_<code>", "http_<status>", "bad_reply", "canceled", "timeout", "network", "config").`,
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"request", "result"})
	if err := reg.Register(h); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.HistogramVec); ok {
				return existing
			}
		}
		panic("upstream: registering metrics: " + err.Error())
	}
	return h
}

// CloseIdleConnections closes the HTTP client's idle connections, Call's
// and Post's.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// Call sends one Erply request: POST acct.URL() with form plus request,
// clientCode and sendContentType=1 in the body. It retries what is safe to
// retry (network failures before a reply, HTTP 5xx, HTTP 429 after at least
// RateLimitWait, error 1000) and nothing else. Every error is an *Error. When
// Erply answered with an error code, the decoded Reply comes back with the
// *Error, so that a caller can pass Erply's answer on. An HTTP 403 to a call
// that carried a sessionKey is checked with SessionKeyDead: for a dead key
// the error is Code 1054 (ErrSessionInvalid, HTTPStatus 403, no Reply); for
// a live one it stays the HTTP 403.
func (c *Client) Call(ctx context.Context, acct Account, request string, form url.Values) (*Reply, error) {
	return c.call(ctx, acct, request, form, nil)
}

// call is Call with a decoder for the reply's records, run on a successful
// reply so that a reply without what the caller needs counts as a bad reply
// in logs and metrics.
func (c *Client) call(ctx context.Context, acct Account, request string, form url.Values, decode func(*Reply) error) (*Reply, error) {
	start := c.clock.Now()
	st := &callState{c: c, ctx: ctx, request: request, decode: decode, once: changesState[request]}
	reply, err := st.do(acct, form)
	var e *Error
	if errors.As(err, &e) && e.HTTPStatus == http.StatusForbidden && e.Code == 0 &&
		request != "getSessionKeyInfo" && c.SessionKeyDead(ctx, acct, form.Get("sessionKey")) {
		// An HTTP 403 for a key Erply no longer knows: the same as 1054, so
		// that callers refresh the session (compare-and-refresh).
		err = &Error{Request: request, Code: CodeSessionExpired, HTTPStatus: http.StatusForbidden}
	}
	took := c.clock.Now().Sub(start)
	class := Result(err)
	if c.duration != nil {
		c.duration.WithLabelValues(request, class).Observe(took.Seconds())
	}
	c.log.Debug().Str("request", request).Dur("duration", took).
		Str("result", class).Int("attempts", st.attempts).Msg("erply call")
	return reply, err
}

// callState is the state of one call across its attempts.
type callState struct {
	c        *Client
	ctx      context.Context
	request  string
	decode   func(*Reply) error // may be nil
	attempts int
	// once marks a request that changes something at Erply: it is sent
	// again only when the failed attempt certainly did nothing.
	once bool

	// retryablehttp calls the hooks below synchronously from Do, in the
	// caller's goroutine, so these need no lock.
	last  *Error        // the failure of the latest attempt
	wait  time.Duration // before the next attempt, decided by checkRetry
	reply *Reply
}

var errInvalidAccount = errors.New("invalid account: empty client code or unusable API URL")

// newRequest builds what every request to Erply is: a POST to acct.URL()
// whose urlencoded body is form with clientCode, sendContentType=1 and,
// unless request is "", request set, carrying the client's User-Agent. It
// does not change form. Its only error is errInvalidAccount, which does
// not quote the URL.
func (c *Client) newRequest(ctx context.Context, acct Account, request string, form url.Values) (*http.Request, error) {
	u, err := url.Parse(acct.URL())
	if acct.ClientCode == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errInvalidAccount
	}
	body := make(url.Values, len(form)+3)
	for k, v := range form {
		body[k] = v
	}
	if request != "" {
		body.Set("request", request)
	}
	body.Set("clientCode", acct.ClientCode)
	body.Set("sendContentType", "1")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), strings.NewReader(body.Encode()))
	if err != nil {
		return nil, errInvalidAccount
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("User-Agent", c.userAgent)
	return req, nil
}

// Post sends form, which names its own request, as one request to Erply
// built as Call's are (POST acct.URL(), clientCode and sendContentType=1
// added, the same User-Agent, connections and redirect policy), and
// returns the reply unread; the caller closes its body. It is the path for
// calls the daemon passes on for others (the proxy): nothing is retried,
// decoded, logged or counted, and the HTTP client's Timeout, which bounds
// one attempt of Call, does not apply: ctx bounds the request and the
// reading of its reply. A request that could not be sent returns the
// cause alone, never the URL.
func (c *Client) Post(ctx context.Context, acct Account, form url.Values) (*http.Response, error) {
	req, err := c.newRequest(ctx, acct, "", form)
	if err != nil {
		return nil, err
	}
	resp, err := c.post.Do(req)
	if err != nil {
		return nil, transportCause(err)
	}
	return resp, nil
}

func (st *callState) do(acct Account, form url.Values) (*Reply, error) {
	hreq, err := st.c.newRequest(st.ctx, acct, st.request, form)
	if err != nil {
		return nil, &Error{Request: st.request, Err: invalidRequest{err}}
	}
	req, err := retryablehttp.FromRequest(hreq)
	if err != nil {
		return nil, &Error{Request: st.request, Err: invalidRequest{errInvalidAccount}}
	}
	req.Header.Set("Accept", "application/json")
	req.SetResponseHandler(st.handleResponse)

	rc := &retryablehttp.Client{
		HTTPClient:     st.c.http,
		Logger:         nil, // this package logs for itself, without URLs or bodies
		RetryWaitMin:   st.c.waitMin,
		RetryWaitMax:   st.c.waitMax,
		RetryMax:       st.c.retryMax,
		RequestLogHook: func(retryablehttp.Logger, *http.Request, int) { st.attempts++ },
		CheckRetry:     st.checkRetry,
		Backoff:        st.backoff,
		ErrorHandler:   st.errorHandler,
	}
	resp, err := rc.Do(req)
	if resp != nil {
		resp.Body.Close()
	}
	if err == nil {
		return st.reply, nil
	}
	var e *Error
	if !errors.As(err, &e) {
		// retryablehttp gave up while waiting to retry because ctx ended.
		e = st.withContextErr(err)
	}
	if e.Code != 0 {
		return st.reply, e
	}
	return nil, e
}

// invalidRequest marks an error the caller made before anything was sent.
type invalidRequest struct{ err error }

func (e invalidRequest) Error() string { return e.err.Error() }
func (e invalidRequest) Unwrap() error { return ErrBadRequest }

// withContextErr is the error for a call whose context ended: it satisfies
// errors.Is(err, ctx.Err()) and keeps what the last attempt saw.
func (st *callState) withContextErr(cause error) *Error {
	e := &Error{Request: st.request, Err: cause}
	if ctxErr := st.ctx.Err(); ctxErr != nil {
		e.Err = ctxErr
	}
	if st.last != nil {
		e.Code, e.Field, e.HTTPStatus, e.RetryAfter = st.last.Code, st.last.Field, st.last.HTTPStatus, st.last.RetryAfter
	}
	return e
}

// checkRetry decides after each attempt. It is called once with the outcome
// of the HTTP round trip and, when that did not ask for a retry, once more
// with the result of handleResponse.
func (st *callState) checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if err == nil && resp != nil && resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// Either the reply is yet to be read, or it was read successfully.
		return false, nil
	}
	if ctx.Err() != nil {
		return false, st.withContextErr(ctx.Err())
	}
	var e *Error
	retry := false
	switch {
	case errors.As(err, &e):
		// From handleResponse: only maintenance is worth another try.
		retry = e.Code == CodeMaintenance
	case err != nil:
		// No reply at all: the request may not have reached Erply, and the
		// calls this client makes can be repeated without harm.
		e = &Error{Request: st.request, Err: transportCause(err)}
		retry = retryableTransport(err)
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		e = st.statusError(resp)
		retry = true
	default:
		// Not retried; handleResponse turns it into the error.
		return false, nil
	}
	st.last = e
	if retry && st.once && !notProcessed(e, err) {
		// The attempt may have done its work with only the reply lost: a
		// second changePassword would meet a deleted key and hide that.
		retry = false
	}
	if !retry {
		return false, e
	}
	st.wait = st.nextWait(ctx, e)
	if st.wait < 0 {
		// Waiting would outlast the caller's deadline or Erply's own
		// Retry-After is beyond reason: give the error back now.
		return false, e
	}
	return true, e
}

// changesState names the requests that change something at Erply, so
// that sending one twice is not harmless.
var changesState = map[string]bool{"changePassword": true}

// notProcessed reports whether a failed attempt certainly left Erply
// unchanged: maintenance (1000), the per-IP limit (HTTP 429), or a
// connection that was refused before anything was sent.
func notProcessed(e *Error, transportErr error) bool {
	return e.Code == CodeMaintenance || e.HTTPStatus == http.StatusTooManyRequests ||
		(transportErr != nil && errors.Is(transportErr, syscall.ECONNREFUSED))
}

// nextWait is the wait before the next attempt, or -1 when it would not fit.
func (st *callState) nextWait(ctx context.Context, e *Error) time.Duration {
	var d time.Duration
	if e.HTTPStatus == http.StatusTooManyRequests {
		d = e.RetryAfter
		if d > max(st.c.waitMax, st.c.rateLimitWait) {
			return -1
		}
	} else {
		// Exponential backoff with jitter in [d/2, d], at least RetryWaitMin.
		d = st.c.waitMin
		for i := 1; i < st.attempts && d < st.c.waitMax; i++ {
			d *= 2
		}
		d = min(d, st.c.waitMax)
		d = max(st.c.waitMin, d/2+rand.N(d/2+1))
		if e.RetryAfter > d {
			d = min(e.RetryAfter, st.c.waitMax)
		}
	}
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d {
		return -1
	}
	return d
}

func (st *callState) backoff(_, _ time.Duration, _ int, _ *http.Response) time.Duration {
	st.c.log.Debug().Str("request", st.request).Int("attempt", st.attempts).
		Str("result", Result(st.last)).Dur("wait", st.wait).Msg("erply call retrying")
	return st.wait
}

// errorHandler is called when retryablehttp gives up; err is the *Error
// checkRetry returned.
func (st *callState) errorHandler(resp *http.Response, err error, _ int) (*http.Response, error) {
	if resp != nil {
		resp.Body.Close()
	}
	return nil, err
}

// handleResponse reads a reply retryablehttp did not retry at once. It
// always consumes and closes the body and leaves http.NoBody in its place.
func (st *callState) handleResponse(resp *http.Response) error {
	defer func() {
		resp.Body.Close()
		resp.Body = http.NoBody
	}()
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		// Drain a little so the connection can be reused; never read it.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return st.statusError(resp)
	}
	bad := func(reason string) error {
		return &Error{Request: st.request, Err: badReply(reason)}
	}
	if resp.ContentLength > st.c.maxReply {
		return bad("larger than " + strconv.FormatInt(st.c.maxReply, 10) + " bytes")
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, st.c.maxReply+1))
	if err != nil {
		if ctxErr := st.ctx.Err(); ctxErr != nil {
			return &Error{Request: st.request, Err: ctxErr}
		}
		// The reply was cut off after Erply had acted on the request: not
		// retried, since a login that failed might count against the user.
		return &Error{Request: st.request, Err: transportCause(err)}
	}
	if int64(len(body)) > st.c.maxReply {
		return bad("larger than " + strconv.FormatInt(st.c.maxReply, 10) + " bytes")
	}
	reply, err := decodeReply(body)
	st.reply = reply
	var e *Error
	if errors.As(err, &e) {
		e.Request = st.request
		if e.Code == CodeQuotaExceeded {
			e.RetryAfter = UntilNextHour(reply.Status.ServerTime(), st.c.clock.Now())
		}
		return e
	}
	if err != nil {
		return &Error{Request: st.request, Err: err}
	}
	if st.decode != nil {
		if err := st.decode(reply); err != nil {
			return &Error{Request: st.request, Err: err}
		}
	}
	return nil
}

// statusError is the error for a non-2xx HTTP status.
func (st *callState) statusError(resp *http.Response) *Error {
	e := &Error{Request: st.request, HTTPStatus: resp.StatusCode}
	ra, ok := ParseRetryAfter(resp.Header.Get("Retry-After"), st.c.clock.Now())
	if ok {
		e.RetryAfter = ra
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		e.RetryAfter = max(e.RetryAfter, st.c.rateLimitWait)
	}
	return e
}

// UntilNextHour is how long until Erply's hourly quota window (error 1002)
// turns over, on Erply's clock (serverTime) when known, else on localNow.
func UntilNextHour(serverTime, localNow time.Time) time.Duration {
	now := serverTime
	if now.IsZero() {
		now = localNow
	}
	return now.Truncate(time.Hour).Add(time.Hour).Sub(now)
}

// ParseRetryAfter reads a Retry-After header: whole seconds or an HTTP date,
// at most a day ahead (anything else is ignored: false).
func ParseRetryAfter(h string, now time.Time) (time.Duration, bool) {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(h, 10, 64); err == nil {
		if secs < 0 || secs > int64(24*time.Hour/time.Second) {
			return 0, false
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(h)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d > 24*time.Hour {
		return 0, false
	}
	return max(d, 0), true
}

// transportCause strips *url.Error, whose message quotes the URL.
func transportCause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// retryableTransport reports whether a failed round trip may be repeated:
// connection refused or reset, EOF before the reply, timeouts, DNS trouble
// other than "no such host"; never TLS verification failures.
func retryableTransport(err error) bool {
	var (
		certErr  *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		dnsErr   *net.DNSError
		netErr   net.Error
	)
	switch {
	case errors.As(err, &certErr), errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid):
		return false
	case errors.As(err, &dnsErr):
		return !dnsErr.IsNotFound
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE):
		return true
	case errors.As(err, &netErr):
		return true
	}
	return false
}

// Result names how an Erply call, or a login built on one, ended, for the
// result label of metrics and the result field of logs; the pool and this
// package both use it. The vocabulary:
//
//   - "ok": err is nil.
//   - "erply_<code>": Erply answered with that errorCode ("erply_other"
//     for a code of more than five digits).
//   - "http_<status>": Erply answered with that non-2xx HTTP status
//     ("http_other" outside 100–599).
//   - "bad_reply": the reply could not be understood (ErrBadReply).
//   - "canceled": the caller's context was canceled.
//   - "timeout": the caller's deadline passed.
//   - "network": no reply: the connection failed or broke off.
//   - "config": nothing could be sent as configured: an unusable account
//     (empty client code or API URL), or an error that did not come from
//     this package (an unreadable secret file, an unknown parent credential).
//
// What Erply said wins over the context: a call that saw HTTP 503 and then
// ran out of time is "http_503", the same as when the client gives up early
// because the next wait would pass the deadline.
func Result(err error) string {
	if err == nil {
		return "ok"
	}
	var e *Error
	fromHere := errors.As(err, &e)
	switch {
	case fromHere && e.Code > 0 && e.Code < 100000:
		return "erply_" + strconv.Itoa(e.Code)
	case fromHere && e.Code != 0:
		return "erply_other"
	case fromHere && e.HTTPStatus >= 100 && e.HTTPStatus < 600:
		return "http_" + strconv.Itoa(e.HTTPStatus)
	case fromHere && e.HTTPStatus != 0:
		return "http_other"
	case errors.Is(err, ErrBadReply):
		return "bad_reply"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case fromHere && !errors.Is(err, ErrBadRequest):
		return "network"
	}
	return "config"
}
