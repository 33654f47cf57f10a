package proxy

import "github.com/prometheus/client_golang/prometheus"

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
			Help: "Proxied Erply calls by credential, Erply request name (\"other\" when not a plain name) and outcome " +
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
// or one Erply does not know.
const labelOther = "other"

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
