package localapi

import (
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/erply-sessiond/erply-sessiond/internal/answer"
)

// route is one registered pattern with what applies to it.
type route struct {
	s       *Server
	pattern string // the mux pattern, also the metrics label
	// session routes live under /v1/sessions: the TCP rules apply.
	session bool
	// text routes answer errors as "error: message\n".
	text     bool
	counters *routeCounters
	h        func(http.ResponseWriter, *http.Request) error
}

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	s.unmatched = s.metrics.forRoute("unmatched")
	add := func(pattern string, session, text bool, h func(http.ResponseWriter, *http.Request) error) {
		s.mux.Handle(pattern, &route{s: s, pattern: pattern, session: session, text: text,
			counters: s.metrics.forRoute(pattern), h: h})
	}
	const json, text = false, true
	add("GET /v1/sessions", true, json, s.handleList)
	add("GET /v1/sessions/{name}", true, json, s.handleSession)
	add("GET /v1/sessions/{name}/key", true, text, s.handleKey)
	add("GET /v1/sessions/{name}/jwt", true, text, s.handleJWT)
	add("GET /v1/sessions/{name}/identity-token", true, text, s.handleIdentityToken)
	add("POST /v1/sessions/{name}/invalidate", true, json, s.handleInvalidate)
	add("GET /v1/sessions/{name}/endpoints/{list}", true, json, s.handleEndpoints)
	add("GET /v1/sessions/{name}/endpoints/{list}/pick", true, text, s.handlePick)
	add("POST /v1/sessions/{name}/endpoints/{list}/down", true, json, s.handleDown)
	if s.proxy != nil {
		add("POST /v1/sessions/{name}/api", true, json, s.handleProxy)
	}
	if s.rotator != nil {
		// Not a session route for the TCP rules: on TCP it is 404 even
		// with TCPSessions (handleRotate).
		add("POST /v1/sessions/{name}/rotate-password", false, json, s.handleRotate)
	}
	add("GET /healthz", false, text, s.handleHealthz)
	add("GET /readyz", false, json, s.handleReadyz)
	metrics := promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{})
	add("GET /metrics", false, text, func(w http.ResponseWriter, r *http.Request) error {
		metrics.ServeHTTP(w, r)
		return nil
	})
}

// ServeHTTP applies the TCP rules, runs the handler and writes its error.
func (rt *route) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rec, ok := w.(*recorder); ok {
		rec.route = rt
	}
	if rt.session {
		if ci := peerOf(r.Context()); ci.tcp {
			switch {
			case !rt.s.tcpSessions:
				answer.Write(w, errTCPNotFound, rt.text)
				return
			case !loopbackHost(r.Host):
				// A page reached through DNS rebinding is same-origin
				// with the listener and may set the header; its Host
				// still names the attacker's domain.
				answer.Write(w, errHost, rt.text)
				return
			case r.Header.Get(RequestHeader) != "1":
				answer.Write(w, errMissingHeader, rt.text)
				return
			}
		}
	}
	if err := rt.h(w, r); err != nil {
		answer.Write(w, err, rt.text)
	}
}

// loopbackHost reports whether a request's Host names the loopback
// interface: localhost or a loopback address (127.0.0.1, [::1]), with or
// without a port.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// serveHTTP is the servers' handler: it limits the body, dispatches through
// the mux, counts and logs the request.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := s.clk.Now()
	if r.Body != nil && r.Body != http.NoBody {
		limit := int64(MaxBodyBytes)
		if s.proxy != nil && r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/api") {
			// Erply calls can carry bulk data: the proxy enforces its own limit.
			limit = MaxProxyBodyBytes
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
	}
	rec := recorders.Get().(*recorder)
	rec.ResponseWriter = w
	s.mux.ServeHTTP(rec, r)

	status := rec.status
	if status == 0 {
		status = http.StatusOK // nothing written: net/http answers 200
	}
	name := "unmatched"
	if rec.route != nil {
		name = rec.route.pattern
		rec.route.counters.inc(status)
	} else {
		s.unmatched.inc(status)
	}
	*rec = recorder{}
	recorders.Put(rec)

	if ev := s.log.Debug(); ev.Enabled() {
		ev.Str("route", name).Int("status", status).Dur("duration", s.clk.Now().Sub(start))
		ci := peerOf(r.Context())
		switch {
		case ci.tcp:
			ev.Str("peer", "tcp")
		case ci.ok:
			ev.Uint32("uid", ci.uid).Uint32("pid", ci.pid)
		default:
			ev.Str("peer", "unknown")
		}
		ev.Msg("request")
	}
}

var recorders = sync.Pool{New: func() any { return new(recorder) }}

// recorder notes the status and the route that took the request. When no
// route did, the mux is answering 404 or 405 by itself, and the recorder
// replaces that plain-text answer with the API's JSON error shape.
type recorder struct {
	http.ResponseWriter
	route   *route
	status  int
	swallow bool // the mux's own body is being discarded
}

func (w *recorder) WriteHeader(status int) {
	if w.status != 0 {
		w.ResponseWriter.WriteHeader(status) // let net/http report the superfluous call
		return
	}
	w.status = status
	if w.route == nil && (status == http.StatusNotFound || status == http.StatusMethodNotAllowed) {
		w.swallow = true
		w.Header().Del("X-Content-Type-Options")
		err := errNotFound
		if status == http.StatusMethodNotAllowed {
			err = errMethod
		}
		answer.Write(w.ResponseWriter, err, false) // keeps the Allow header the mux set
		return
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *recorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.swallow {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer (Flush, deadlines).
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }
