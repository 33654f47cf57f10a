package proxy

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's Prometheus collectors. Labels carry credential
// names, client codes and Erply call names: never a secret or a form value.
type metrics struct {
	requests *prometheus.CounterVec
	retries  *prometheus.CounterVec
	paused   *prometheus.CounterVec
	inflight *prometheus.GaugeVec
	duration *prometheus.HistogramVec
}

func newMetrics() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erply_sessiond_proxy_requests_total",
			Help: "Proxied Erply calls by credential, Erply request name (\"other\" unless Erply has carried out a call of that name) and outcome " +
				"(ok, erply_error, session_retry_ok, rejected, paused, busy, upstream_error).",
		}, []string{"credential", "request", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erply_sessiond_proxy_session_retries_total",
			Help: "Proxied calls re-sent with a new session after Erply answered 1054/1055, by credential.",
		}, []string{"credential"}),
		paused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erply_sessiond_proxy_paused_seconds_total",
			Help: "Seconds proxied calls were paused for Erply's limits (429, 1002), by client code; added when a pause is set.",
		}, []string{"client_code"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "erply_sessiond_proxy_inflight",
			Help: "Proxied calls holding an upstream slot now, by client code.",
		}, []string{"client_code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "erply_sessiond_proxy_request_duration_seconds",
			Help:    "Proxied calls from arrival to answer (waiting for a slot and the one re-send included), by credential and outcome.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 90},
		}, []string{"credential", "outcome"}),
	}
}

func (m *metrics) register(reg prometheus.Registerer) {
	reg.MustRegister(m.requests, m.retries, m.paused, m.inflight, m.duration)
}

// labelOther stands for a request name that is missing, not a plain name,
// or not (yet) one of the names Erply has carried out.
const labelOther = "other"

// MaxRequestLabels is the most request names the proxy's metrics carry as
// label values; every other name counts as "other".
const MaxRequestLabels = 256

// requestLabels are the request names that label the proxy's metrics: only
// names of calls Erply has carried out (answered with errorCode 0), and at
// most MaxRequestLabels of them. A caller making up names, or sending ones
// rejected before Erply sees them, cannot add a series; a name Erply once
// carried out keeps its label for every later outcome of that call.
type requestLabels struct {
	mu    sync.RWMutex
	names map[string]struct{}
}

// label returns the label of a call named name (already a plain name or
// labelOther); carriedOut reports whether Erply carried this call out.
func (l *requestLabels) label(name string, carriedOut bool) string {
	if name == labelOther {
		return name
	}
	l.mu.RLock()
	_, known := l.names[name]
	l.mu.RUnlock()
	if known {
		return name
	}
	if !carriedOut {
		return labelOther
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, known := l.names[name]; known {
		return name
	}
	if len(l.names) >= MaxRequestLabels {
		return labelOther
	}
	if l.names == nil {
		l.names = make(map[string]struct{})
	}
	l.names[name] = struct{}{}
	return name
}

// requestLabel returns name if it matches ^[A-Za-z][A-Za-z0-9]{0,63}$, else labelOther.
func requestLabel(name string) string {
	if len(name) == 0 || len(name) > 64 {
		return labelOther
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (i == 0 || c < '0' || c > '9') {
			return labelOther
		}
	}
	return name
}
