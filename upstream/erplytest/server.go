package erplytest

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
)

// maxBody caps a request body; Erply's login calls are a few hundred bytes.
const maxBody = 1 << 20

// Server is a fake Erply API listening on a loopback port. It serves the
// calls the daemon uses (verifyUser, switchUser, verifyIdentityToken,
// verifyOAuthToken, getSessionKeyInfo, getSessionKeyUser, getJwtToken,
// getIdentityToken, changePassword) with Erply's documented semantics, and
// answers any other request name with an empty "ok" when the sessionKey is
// live, so a proxy can forward arbitrary calls. Session expiry, login blocks
// and JWT lifetimes are measured on the injected clock.
//
// Wire format: POST to /{clientCode}/api/. Parameters are read from an
// application/x-www-form-urlencoded body and from the URL's query string, as
// real Erply does (the official Go SDK sends every parameter in the query
// unless told otherwise); a body value comes before a query value of the same
// name. Requests with a query string are counted by QueryStringsSeen and the
// names that arrived there by QueryFieldsSeen, so tests can assert that
// secrets never travel in URLs. Replies are HTTP 200 with Erply's
// {"status":{…},"records":…} envelope; "records" is an array, except for
// getJwtToken, getIdentityToken and verifyIdentityToken where it is an
// object, and [] in error replies. userID, employeeID and groupID are sent as
// strings and sessionLength as a number, as real Erply does.
//
// Choices where Erply's documentation is silent:
//   - A path that is not /{clientCode}/api/, or whose client code differs from
//     the form's clientCode, gets HTTP 404 (as a wrong host name would); any
//     method but POST gets HTTP 405. A request without clientCode gets
//     Erply's error 1001 (account not found). None of these is counted.
//   - A request with more than one sessionKey value gets 1016 with errorField
//     sessionKey, rather than one of them picked silently.
//   - A login (verifyUser, verifyIdentityToken, verifyOAuthToken) to an
//     account never added gets 1053, as does verifyUser for a user without a
//     password. An unknown user name gets 1051 and counts no failure.
//   - Five consecutive wrong passwords block the user for 30 minutes from the
//     fifth; while blocked every login of that user, including switchUser with
//     their PIN, gets 1052 and further attempts do not extend the block. A
//     wrong PIN gets 1051 and blocks nobody.
//   - A sessionKey that is missing or was never issued for this account gets
//     1055; an expired or deleted one gets 1054. switchUser accepts a parent
//     key up to 2 h after its expiry (1056 later) but not a deleted one (1054).
//   - JWTs are HS256 with a fixed key. A token that does not verify, has
//     expired or belongs to another account gets 1191; a valid token naming a
//     user the account lacks gets 1173. verifyOAuthToken accepts only tokens
//     made by IssueOAuthToken (others: 1173).
//   - An empty or missing request name gets 1005.
//
// All methods are safe for concurrent use.
type Server struct {
	clk    clock.Clock
	ts     *httptest.Server
	ctx    context.Context // cancelled by Close, ends Latency waits
	cancel context.CancelFunc

	mu          sync.Mutex
	accounts    map[string]*Account
	sessions    map[string]*session
	idTokens    map[string]string // identity/Erply JWT -> session key it was exchanged for
	oauth       map[string]oauthToken
	jwtLifetime time.Duration
	faults      []*activeFault
	handlers    map[string]func(url.Values) (int, []byte)

	calls       map[string]int
	callsFor    map[callKey]int
	total       int
	lastForm    map[string]url.Values
	inFlight    int
	maxInFlight int
	queries     int
	queryFields map[string]bool

	// testHook, if set before the first request, is told "latency-wait" when
	// a Latency fault starts waiting and "latency-abort" when such a wait ends
	// early because the request or the server ended.
	testHook func(event string)
}

type callKey struct{ clientCode, request string }

type activeFault struct {
	f    Fault
	left int // remaining matches; 0 means unlimited
}

// Fault makes matching requests misbehave. A zero field matches or does
// nothing: Fault{Request: "verifyUser", HTTPStatus: 503, Count: 2} answers
// the next two verifyUser calls of any account with HTTP 503.
type Fault struct {
	// Request is the Erply request name to match; "" matches every request.
	Request string
	// ClientCode is the account to match; "" matches every account.
	ClientCode string
	// Latency is real (not injected-clock) time to wait before answering. If
	// the client gives up or the server is closed first, the connection is
	// closed without an answer. A fault with only Latency set then answers
	// normally.
	Latency time.Duration
	// Drop closes the connection without answering.
	Drop bool
	// HTTPStatus answers with this HTTP status and a small non-JSON body.
	HTTPStatus int
	// DeadKeyHTTPStatus answers with this HTTP status and a small non-JSON
	// body only a call whose sessionKey Erply would refuse with 1054 or 1055
	// (expired, deleted or never issued), as Erply's wiki says an expired
	// session may be answered with HTTP 403. A call with a live key or
	// without one, and switchUser (whose parent key may be expired by
	// design), does not match and does not use up Count.
	DeadKeyHTTPStatus int
	// RetryAfter, if positive, is sent as a Retry-After header (whole seconds,
	// rounded up) with HTTPStatus, e.g. for 429.
	RetryAfter time.Duration
	// ErplyCode answers HTTP 200 with an Erply error envelope carrying this
	// code, e.g. 1000 (maintenance) or 1002 (quota exceeded).
	ErplyCode int
	// Count is how many matching calls the fault applies to; 0 means until
	// ClearFaults.
	Count int
}

// New starts a fake Erply server on a loopback port, reading time from clk.
// Close it when done.
func New(clk clock.Clock) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		clk:         clk,
		ctx:         ctx,
		cancel:      cancel,
		accounts:    make(map[string]*Account),
		sessions:    make(map[string]*session),
		idTokens:    make(map[string]string),
		oauth:       make(map[string]oauthToken),
		jwtLifetime: time.Hour,
		handlers:    make(map[string]func(url.Values) (int, []byte)),
		calls:       make(map[string]int),
		callsFor:    make(map[callKey]int),
		lastForm:    make(map[string]url.Values),
		queryFields: make(map[string]bool),
	}
	s.ts = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	return s
}

// Close ends pending Latency waits, shuts the server down and waits for
// in-flight requests to finish.
func (s *Server) Close() {
	s.cancel()
	s.ts.Close()
}

// Handler returns the fake's HTTP handler, for serving it on a listener of
// the caller's own (TLS, an added network delay). Requests it serves share
// the server's state and counters.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// URL returns the server's base URL, http://127.0.0.1:PORT.
func (s *Server) URL() string { return s.ts.URL }

// APIURL returns the API URL template, http://127.0.0.1:PORT/{clientCode}/api/,
// in the form the daemon's API_URL setting takes.
func (s *Server) APIURL() string { return s.ts.URL + "/{clientCode}/api/" }

// SetJWTLifetime sets the lifetime of JWTs issued from now on by logins,
// getJwtToken and getIdentityToken (default 1 h). It is independent of the
// session length.
func (s *Server) SetJWTLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jwtLifetime = d
}

// Inject adds a fault. Faults are tried in the order they were injected and
// the first match applies; faulted calls still count in Calls.
func (s *Server) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &activeFault{f: f, left: f.Count})
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// SetHandler makes request answer with whatever h returns (HTTP status and
// raw body, sent as application/json) instead of its normal reply, so tests
// can send oversized, truncated or malformed replies. h runs after faults and
// counters and may block; it gets a copy of the form. A nil h restores the
// normal reply.
func (s *Server) SetHandler(request string, h func(form url.Values) (status int, body []byte)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h == nil {
		delete(s.handlers, request)
		return
	}
	s.handlers[request] = h
}

// Calls returns how many requests named request were received (all accounts)
// since the last ResetCounters, including faulted ones.
func (s *Server) Calls(request string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[request]
}

// CallsFor is Calls restricted to one account.
func (s *Server) CallsFor(clientCode, request string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.callsFor[callKey{clientCode, request}]
}

// TotalCalls returns how many API requests were received since the last
// ResetCounters (requests rejected with 404 or 405 are not counted).
func (s *Server) TotalCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// LastForm returns a copy of the form of the last request named request, or
// nil if there was none since the last ResetCounters.
func (s *Server) LastForm(request string) url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.lastForm[request]
	if !ok {
		return nil
	}
	return cloneValues(f)
}

// MaxInFlight returns the peak number of requests being handled at the same
// time since the last ResetCounters.
func (s *Server) MaxInFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxInFlight
}

// QueryStringsSeen returns how many requests carried a query string in their
// URL since the last ResetCounters, so tests can assert that secrets never
// travel in URLs.
func (s *Server) QueryStringsSeen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries
}

// QueryFieldsSeen returns the sorted names of the parameters that arrived in
// a URL's query string since the last ResetCounters (never their values).
func (s *Server) QueryFieldsSeen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.queryFields))
	for k := range s.queryFields {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// ResetCounters zeroes the call counters, forgets the recorded forms and
// query strings, and restarts MaxInFlight from the requests in flight now.
func (s *Server) ResetCounters() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = make(map[string]int)
	s.callsFor = make(map[callKey]int)
	s.total = 0
	s.lastForm = make(map[string]url.Values)
	s.maxInFlight = s.inFlight
	s.queries = 0
	s.queryFields = make(map[string]bool)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.inFlight++
	s.maxInFlight = max(s.maxInFlight, s.inFlight)
	if r.URL.RawQuery != "" {
		s.queries++
		if q, err := url.ParseQuery(r.URL.RawQuery); err == nil {
			for k := range q {
				s.queryFields[k] = true
			}
		}
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()

	pathCode, ok := clientCodeFromPath(r.URL.Path)
	if !ok {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	form := r.Form // the body's values first, then the query's
	clientCode := form.Get("clientCode")
	request := form.Get("request")
	if clientCode == "" {
		writeEnvelope(w, request, s.clk.Now(), nil, codeAccountNotFound, "")
		return
	}
	if clientCode != pathCode {
		http.NotFound(w, r)
		return
	}
	fault, handler := s.record(clientCode, request, form)

	if fault != nil {
		if fault.Latency > 0 && !s.wait(r.Context(), fault.Latency) {
			drop(w) // returning would send an empty 200
			return
		}
		switch {
		case fault.Drop:
			drop(w)
			return
		case fault.HTTPStatus != 0 || fault.DeadKeyHTTPStatus != 0:
			if fault.HTTPStatus == 0 {
				fault.HTTPStatus = fault.DeadKeyHTTPStatus
			}
			if fault.RetryAfter > 0 {
				secs := (fault.RetryAfter + time.Second - 1) / time.Second
				w.Header().Set("Retry-After", strconv.Itoa(int(secs)))
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(fault.HTTPStatus)
			_, _ = w.Write([]byte("<html><body><h1>" + strconv.Itoa(fault.HTTPStatus) + " " +
				http.StatusText(fault.HTTPStatus) + "</h1></body></html>\n"))
			return
		case fault.ErplyCode != 0:
			writeEnvelope(w, request, s.clk.Now(), nil, fault.ErplyCode, "")
			return
		}
	}
	if handler != nil {
		status, body := handler(cloneValues(form))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
		return
	}
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	now, records, code, field := s.dispatch(clientCode, request, form, ip)
	writeEnvelope(w, request, now, records, code, field)
}

// clientCodeFromPath accepts /{clientCode}/api/ (trailing slash optional).
func clientCodeFromPath(p string) (string, bool) {
	code, rest, ok := strings.Cut(strings.TrimPrefix(p, "/"), "/")
	if !ok || code == "" || (rest != "api/" && rest != "api") {
		return "", false
	}
	return code, true
}

// record counts the call and returns the fault and handler override that apply.
func (s *Server) record(clientCode, request string, form url.Values) (*Fault, func(url.Values) (int, []byte)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[request]++
	s.callsFor[callKey{clientCode, request}]++
	s.total++
	s.lastForm[request] = cloneValues(form)

	var fault *Fault
	for i, af := range s.faults {
		if (af.f.Request != "" && af.f.Request != request) || (af.f.ClientCode != "" && af.f.ClientCode != clientCode) {
			continue
		}
		if af.f.DeadKeyHTTPStatus != 0 && !s.deadKeyLocked(clientCode, request, form) {
			continue
		}
		f := af.f
		fault = &f
		if af.left > 0 {
			af.left--
			if af.left == 0 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			}
		}
		break
	}
	return fault, s.handlers[request]
}

// deadKeyLocked reports whether the call carries a sessionKey that Erply
// would refuse (1054/1055); switchUser never counts, as it may use an
// expired parent key.
func (s *Server) deadKeyLocked(clientCode, request string, form url.Values) bool {
	key := form.Get("sessionKey")
	if key == "" || request == "switchUser" {
		return false
	}
	_, code := s.liveSessionLocked(clientCode, key, s.clk.Now())
	return code != 0
}

// wait sleeps d of real time; it reports false if the request or the server
// ended first.
func (s *Server) wait(ctx context.Context, d time.Duration) bool {
	if s.testHook != nil {
		s.testHook("latency-wait")
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-s.ctx.Done():
	}
	if s.testHook != nil {
		s.testHook("latency-abort")
	}
	return false
}

// drop closes the connection without writing a response.
func drop(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

type status struct {
	Request           string  `json:"request"`
	RequestUnixTime   int64   `json:"requestUnixTime"`
	ResponseStatus    string  `json:"responseStatus"`
	ErrorCode         int     `json:"errorCode"`
	ErrorField        string  `json:"errorField,omitempty"`
	GenerationTime    float64 `json:"generationTime"`
	RecordsTotal      int     `json:"recordsTotal"`
	RecordsInResponse int     `json:"recordsInResponse"`
}

// writeEnvelope writes Erply's reply envelope. records is a []any, a
// map[string]any, or nil for an error (sent as [], as Erply does).
func writeEnvelope(w http.ResponseWriter, request string, now time.Time, records any, code int, field string) {
	st := status{
		Request:         request,
		RequestUnixTime: now.Unix(),
		ResponseStatus:  "ok",
		ErrorCode:       code,
		ErrorField:      field,
		GenerationTime:  0.000412,
	}
	if code != 0 {
		st.ResponseStatus = "error"
		records = []any{}
	}
	switch r := records.(type) {
	case []any:
		if code == 0 {
			st.RecordsTotal, st.RecordsInResponse = len(r), len(r)
		}
	case map[string]any:
		st.RecordsTotal, st.RecordsInResponse = 1, 1
	}
	body, err := json.Marshal(struct {
		Status  status `json:"status"`
		Records any    `json:"records"`
	}{st, records})
	if err != nil {
		// Only values built by this package are marshalled; SetEndpoints
		// callers could pass something unencodable.
		http.Error(w, "erplytest: cannot encode reply: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(body)
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}
