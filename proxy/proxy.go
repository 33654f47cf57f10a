// Package proxy owns the Erply API proxy for local callers: it injects the credential's session into their calls, re-sends once after 1054/1055, and keeps within Erply's limits per client code.
package proxy

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/internal/answer"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Defaults for the zero fields of Options.
const (
	DefaultConcurrency = 10
	DefaultMaxBody     = 1 << 20
	// DefaultMaxReply bounds what of a reply is held while looking for its
	// status: Erply sends status first (a few hundred bytes), and a
	// bounded hold keeps the proxy's memory per call small whatever the
	// reply (ten 100 MiB replies with status last held 32 MiB each).
	DefaultMaxReply  = 256 << 10
	DefaultQueueWait = 30 * time.Second
	// DefaultRequestTimeout bounds one upstream request, its reply included.
	DefaultRequestTimeout = 90 * time.Second

	// MinRateLimitPause is the least pause after an HTTP 429 from Erply.
	MinRateLimitPause = 10 * time.Second
)

// Sessions is what the proxy needs from the pool; *pool.Pool implements it.
type Sessions interface {
	// Get returns the credential's current session (pool.ErrUnknownCredential
	// for an unknown name, *pool.UnavailableError when there is none).
	Get(ctx context.Context, name string) (*pool.Snapshot, error)
	// Invalidate is compare-and-refresh: it replaces the session only if
	// staleKey is still current, and returns the session to use now.
	Invalidate(ctx context.Context, name, staleKey string) (*pool.Snapshot, error)
	// Snapshot returns the credential's latest snapshot without waiting for
	// a login, and false for a name that is not configured. Requests
	// rejected before their session is fetched are counted under their
	// credential when it is configured, else under credential="" (names
	// that are not known never become metric labels).
	Snapshot(name string) (*pool.Snapshot, bool)
}

// Upstream sends the proxied calls; *upstream.Client implements it, so
// that proxied calls and logins take one path to Erply: one request
// builder, one User-Agent, one set of connections.
type Upstream interface {
	// Post sends form (which names its request) to acct's API URL with
	// clientCode and sendContentType=1 added, and returns the reply unread;
	// an error means no reply and never quotes the URL.
	Post(ctx context.Context, acct upstream.Account, form url.Values) (*http.Response, error)
	// SessionKeyDead reports whether Erply refuses sessionKey (its
	// getSessionKeyInfo answers 1054/1055). The proxy asks after an HTTP
	// 403, which Erply may send for an expired session instead of 1054.
	SessionKeyDead(ctx context.Context, acct upstream.Account, sessionKey string) bool
	// CloseIdleConnections closes the connections kept alive for reuse.
	CloseIdleConnections()
}

// Options configure a Proxy. Sessions is required; every other zero field
// takes its default.
type Options struct {
	// Sessions supplies the sessions.
	Sessions Sessions
	// Upstream sends the calls to Erply: the daemon passes the client that
	// logs in. When nil, an upstream.Client with default settings is made.
	Upstream Upstream
	// Clock is the time source (default clock.Real): pauses after 1002/429
	// and the wait for a free slot are measured on it.
	Clock clock.Clock
	// Logger gets one debug line per request (never a form value) and a
	// warning when a client code is paused.
	Logger zerolog.Logger
	// Registerer, when set, gets the proxy's metrics.
	Registerer prometheus.Registerer
	// Concurrency is the most upstream requests in flight at once per client
	// code (default DefaultConcurrency).
	Concurrency int
	// RequestTimeout bounds one upstream request, its reply included
	// (default DefaultRequestTimeout, and never past the caller's deadline).
	RequestTimeout time.Duration
	// MaxBody limits a caller's request body (default DefaultMaxBody); a
	// larger one gets 413 body_too_large.
	MaxBody int64
	// MaxReply is how much of Erply's reply is held in memory while looking
	// for its "status" member (default DefaultMaxReply). Erply sends status
	// first, so normally only a few hundred bytes are held and the rest is
	// streamed; a reply whose status is not within MaxReply bytes is passed
	// through unchanged without inspection: no re-send after a 1054 there,
	// no pause after a 1002 there.
	MaxReply int64
	// QueueWait is how long a caller waits for a free slot (default
	// DefaultQueueWait, and never past the caller's own deadline) before 503
	// proxy_busy.
	QueueWait time.Duration
}

// Proxy forwards local callers' Erply calls with the credential's session.
// It is an http.Handler for the route POST /v1/sessions/{name}/api and is
// safe for concurrent use. Make it with New.
//
// The caller sends an Erply form body without clientCode and sessionKey;
// the proxy adds both and sendContentType=1 and POSTs it to the
// credential's API URL. What the caller gets back:
//
//   - Erply's answer, whatever its HTTP status or errorCode: the status, the
//     Content-Type, Content-Encoding and Retry-After headers, and the body
//     bytes unchanged (a gzip transfer the proxy asked for is decoded).
//   - After a 1054/1055, or an HTTP 403 for a key that getSessionKeyInfo
//     then says is dead: the key is invalidated (compare-and-refresh, so
//     many callers failing with one key cause one login) and the call is
//     re-sent once with the new key; that second answer is relayed as it
//     is. A 403 for a live key is relayed as it is, with no login.
//   - After an HTTP 429 or a 1002, the triggering caller gets that answer and
//     the client code is paused (429: Retry-After, at least 10 s; 1002: until
//     the hour turns on Erply's clock); until then callers get 503
//     erply_rate_limited or erply_quota_exceeded with Retry-After, and
//     nothing is sent.
//   - No answer from Erply (connection failed, timed out): 502
//     upstream_unreachable, never re-sent, as the call may not be
//     idempotent. A reply that breaks off midway cuts the caller's
//     connection, so a truncated reply is never taken for a whole one.
//   - All slots of the client code taken: the caller waits in line up to
//     QueueWait (and its own deadline), then 503 proxy_busy, Retry-After: 1.
//   - A bad request: 400 (query_not_allowed, caller_supplied_session,
//     missing_request, bad_form), 413 body_too_large, 415
//     unsupported_media_type; an unknown credential 404; no session 503
//     no_valid_session. Errors are JSON {"error","message","erplyCode"}.
type Proxy struct {
	sessions    Sessions
	up          Upstream
	clk         clock.Clock
	log         zerolog.Logger
	timeout     time.Duration
	concurrency int64
	maxBody     int64
	maxReply    int64
	queueWait   time.Duration
	metrics     *metrics
	labels      requestLabels

	mu     sync.Mutex
	limits map[string]*limiter // by client code

	// onQueue, if set (by tests), is called when a caller starts waiting for
	// a slot, after its queue timer is armed.
	onQueue func()
}

// New returns a Proxy with opts' zero fields set to their defaults. It
// registers the proxy's metrics on opts.Registerer and panics if they are
// already registered there (a wiring mistake, as with MustRegister).
func New(opts Options) *Proxy {
	if opts.Sessions == nil {
		panic("proxy: Options.Sessions is nil")
	}
	p := &Proxy{
		sessions:    opts.Sessions,
		up:          opts.Upstream,
		clk:         opts.Clock,
		log:         opts.Logger.With().Str("component", "proxy").Logger(),
		timeout:     opts.RequestTimeout,
		concurrency: int64(opts.Concurrency),
		maxBody:     opts.MaxBody,
		maxReply:    opts.MaxReply,
		queueWait:   opts.QueueWait,
		metrics:     newMetrics(),
		limits:      make(map[string]*limiter),
	}
	if p.up == nil {
		p.up = upstream.New(upstream.Options{Logger: opts.Logger})
	}
	if p.timeout <= 0 {
		p.timeout = DefaultRequestTimeout
	}
	if p.clk == nil {
		p.clk = clock.Real{}
	}
	if p.concurrency <= 0 {
		p.concurrency = DefaultConcurrency
	}
	if p.maxBody <= 0 {
		p.maxBody = DefaultMaxBody
	}
	if p.maxReply <= 0 {
		p.maxReply = DefaultMaxReply
	}
	if p.queueWait <= 0 {
		p.queueWait = DefaultQueueWait
	}
	if opts.Registerer != nil {
		p.metrics.register(opts.Registerer)
	}
	return p
}

// CloseIdleConnections closes the upstream connections kept alive for reuse.
func (p *Proxy) CloseIdleConnections() { p.up.CloseIdleConnections() }

// exchange is one caller's request as it goes through the proxy, with what
// is reported about it.
type exchange struct {
	name       string
	credential string // metric label: name once known
	request    string // the Erply request name if a plain name, else "other"
	carriedOut bool   // Erply answered the call with errorCode 0
	outcome    string
	status     int
	erplyCode  int
	retried    bool
	// abort is set when the reply broke off after its header was sent: the
	// connection is then cut so that the caller cannot take a truncated
	// reply for a whole one.
	abort bool
}

// Outcomes, the values of the outcome label.
const (
	outcomeOK            = "ok"
	outcomeErplyError    = "erply_error"
	outcomeRetryOK       = "session_retry_ok"
	outcomeRejected      = "rejected"
	outcomePaused        = "paused"
	outcomeBusy          = "busy"
	outcomeUpstreamError = "upstream_error"
)

// ServeHTTP proxies one call for the credential r.PathValue("name"). It
// relies on its mount point for access checks (localapi checks the name, the
// caller's uid/gid and the TCP header rule before calling it).
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := p.clk.Now()
	ex := &exchange{name: r.PathValue("name"), request: labelOther}
	if _, ok := p.sessions.Snapshot(ex.name); ok {
		ex.credential = ex.name
	}
	p.serve(w, r, ex)

	ex.request = p.labels.label(ex.request, ex.carriedOut)
	p.metrics.requests.WithLabelValues(ex.credential, ex.request, ex.outcome).Inc()
	p.metrics.duration.WithLabelValues(ex.credential, ex.outcome).Observe(p.clk.Now().Sub(start).Seconds())
	if ev := p.log.Debug(); ev.Enabled() {
		ev.Str("credential", ex.credential).Str("request", ex.request).Str("outcome", ex.outcome).
			Int("status", ex.status).Bool("retried", ex.retried).Dur("duration", p.clk.Now().Sub(start))
		if ex.erplyCode != 0 {
			ev.Int("erplyCode", ex.erplyCode)
		}
		ev.Msg("proxied")
	}
	if ex.abort {
		panic(http.ErrAbortHandler)
	}
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, ex *exchange) {
	form, perr := p.readForm(w, r)
	if form != nil {
		ex.request = requestLabel(form.Get("request"))
	}
	if perr != nil {
		p.fail(w, ex, perr)
		return
	}

	ctx := r.Context()
	snap, err := p.sessions.Get(ctx, ex.name)
	if err != nil {
		p.fail(w, ex, err)
		return
	}
	ex.credential = ex.name
	if snap == nil || snap.Session == nil || snap.Session.SessionKey == "" {
		p.fail(w, ex, errNoSession)
		return
	}

	lim := p.limiter(snap.ClientCode)
	if perr := p.pausedError(lim); perr != nil {
		p.fail(w, ex, perr)
		return
	}
	if perr := p.acquire(ctx, lim); perr != nil {
		p.fail(w, ex, perr)
		return
	}
	defer lim.release()
	// A pause may have begun while this caller waited in line.
	if perr := p.pausedError(lim); perr != nil {
		p.fail(w, ex, perr)
		return
	}

	for {
		reply, perr := p.send(ctx, snap, form)
		if perr != nil {
			p.fail(w, ex, perr)
			return
		}
		if !ex.retried && (reply.sessionInvalid() || p.forbiddenDeadKey(ctx, snap, reply)) {
			reply.discard()
			ex.retried = true
			p.metrics.retries.WithLabelValues(ex.name).Inc()
			snap, err = p.sessions.Invalidate(ctx, ex.name, snap.Session.SessionKey)
			if err != nil {
				p.fail(w, ex, err)
				return
			}
			if snap == nil || snap.Session == nil || snap.Session.SessionKey == "" {
				p.fail(w, ex, errNoSession)
				return
			}
			if perr := p.pausedError(lim); perr != nil {
				p.fail(w, ex, perr)
				return
			}
			continue
		}
		p.limitsFrom(lim, snap.ClientCode, reply)
		p.relay(w, ex, reply)
		return
	}
}

// readForm checks the caller's request and parses its body. It returns the
// form, if it could be parsed, also with an error.
func (p *Proxy) readForm(w http.ResponseWriter, r *http.Request) (url.Values, *answer.Error) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return nil, errMethod
	}
	if r.URL.RawQuery != "" || r.URL.ForceQuery {
		return nil, errQueryNotAllowed
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/x-www-form-urlencoded" {
			return nil, errMediaType
		}
	}
	if r.ContentLength > p.maxBody {
		return nil, answer.BodyTooLarge(p.maxBody)
	}
	var body []byte
	if r.Body != nil {
		var err error
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, p.maxBody))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				return nil, answer.BodyTooLarge(tooLarge.Limit)
			}
			return nil, errReadBody
		}
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, errBadForm
	}
	for k := range form {
		if f := sessionField(k); f != "" {
			return form, callerSupplied(f)
		}
	}
	if form.Get("request") == "" {
		return form, errMissingRequest
	}
	return form, nil
}

// sessionField returns "sessionKey" or "clientCode" if the form field k
// would set one of them (as PHP reads "sessionKey[]" too), else "".
func sessionField(k string) string {
	if i := strings.IndexByte(k, '['); i >= 0 {
		k = k[:i]
	}
	switch k {
	case "sessionKey", "clientCode":
		return k
	}
	return ""
}

// send makes one upstream request with snap's session, bounded by the
// request timeout, and reads the start of the reply.
func (p *Proxy) send(ctx context.Context, snap *pool.Snapshot, form url.Values) (*reply, *answer.Error) {
	form.Set("sessionKey", snap.Session.SessionKey)
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	resp, err := p.up.Post(ctx, upstream.Account{ClientCode: snap.ClientCode, APIURL: snap.APIURL}, form)
	if err != nil {
		cancel()
		return nil, upstreamError(err)
	}
	rep := &reply{resp: resp, body: &trackedReader{r: resp.Body}, cancel: cancel}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		rep.head, rep.status = inspect(rep.body, p.maxReply)
		if rep.body.err != nil {
			rep.close()
			return nil, upstreamError(rep.body.err)
		}
	}
	return rep, nil
}

// forbiddenDeadKey reports whether rep is an HTTP 403 to a call made with
// a key that Erply no longer knows, which is handled as a 1054.
func (p *Proxy) forbiddenDeadKey(ctx context.Context, snap *pool.Snapshot, rep *reply) bool {
	return rep.resp.StatusCode == http.StatusForbidden &&
		p.up.SessionKeyDead(ctx, upstream.Account{ClientCode: snap.ClientCode, APIURL: snap.APIURL}, snap.Session.SessionKey)
}

// limitsFrom pauses the client code after an HTTP 429 or an Erply 1002.
func (p *Proxy) limitsFrom(lim *limiter, clientCode string, rep *reply) {
	now := p.clk.Now()
	switch {
	case rep.resp.StatusCode == http.StatusTooManyRequests:
		d := MinRateLimitPause
		if ra, ok := upstream.ParseRetryAfter(rep.resp.Header.Get("Retry-After"), now); ok && ra > d {
			d = ra
		}
		p.pause(lim, clientCode, now, d, pauseRateLimited)
	case rep.status.found && rep.status.errorCode == upstream.CodeQuotaExceeded:
		var erplyNow time.Time
		if rep.status.serverTime != 0 {
			erplyNow = time.Unix(rep.status.serverTime, 0)
		}
		p.pause(lim, clientCode, now, upstream.UntilNextHour(erplyNow, now), pauseQuota)
	}
}

func (p *Proxy) pause(lim *limiter, clientCode string, now time.Time, d time.Duration, why pauseReason) {
	added, until := lim.pause(now, d, why)
	if added <= 0 {
		return // other calls' answers already paused it as long
	}
	lim.pausedSeconds.Add(added.Seconds())
	p.log.Warn().Str("client_code", clientCode).Str("reason", why.String()).Time("until", until).
		Msg("Erply limit hit: pausing proxied calls for this client code")
}

// relay writes Erply's reply to the caller: status, the headers that
// matter, and the body bytes as received.
func (p *Proxy) relay(w http.ResponseWriter, ex *exchange, rep *reply) {
	defer rep.close()
	resp := rep.resp
	ex.status = resp.StatusCode
	switch {
	case resp.StatusCode < 200 || resp.StatusCode >= 300:
		ex.outcome = outcomeErplyError
	case rep.status.found && rep.status.errorCode != 0:
		ex.outcome = outcomeErplyError
		ex.erplyCode = int(rep.status.errorCode)
	case ex.retried:
		ex.outcome = outcomeRetryOK
	default:
		ex.outcome = outcomeOK
	}
	ex.carriedOut = resp.StatusCode >= 200 && resp.StatusCode < 300 && rep.status.found && rep.status.errorCode == 0

	h := w.Header()
	for _, k := range relayedHeaders {
		if v := resp.Header.Values(k); len(v) > 0 {
			h[k] = v
		}
	}
	if resp.ContentLength >= 0 && !resp.Uncompressed {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	if _, err := w.Write(rep.head); err != nil {
		return // the caller went away
	}
	if _, err := io.Copy(w, rep.body); err != nil && rep.body.err != nil {
		ex.outcome = outcomeUpstreamError
		ex.abort = true
	}
}

// relayedHeaders are the reply headers passed to the caller.
var relayedHeaders = []string{"Content-Type", "Content-Encoding", "Retry-After"}
