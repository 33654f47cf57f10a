package localapi

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/erply-sessiond/erply-sessiond/pool"
)

// metrics are the API's Prometheus collectors.
type metrics struct {
	requests        *prometheus.CounterVec
	expiry          *expiryCollector
	passwordExpired *passwordExpiredCollector
	connsRefused    prometheus.Counter
}

func newMetrics(sessions Sessions, now func() time.Time) *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erply_sessiond_local_requests_total",
			Help: "Requests to the local API by route pattern and HTTP status.",
		}, []string{"route", "code"}),
		connsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "erply_sessiond_local_connections_refused_total",
			Help: "Connections to the local API answered 503 and closed because their user already held the most allowed.",
		}),
		expiry: &expiryCollector{
			sessions: sessions,
			now:      now,
			desc: prometheus.NewDesc("erply_sessiond_session_expiry_timestamp_seconds",
				"When each credential's current session expires, in Unix seconds (absent while it has none).",
				[]string{"credential"}, nil),
			state: prometheus.NewDesc("erply_sessiond_credential_state",
				"1 for the state each credential is in (starting, ok, refreshing, failing, expired), 0 for the others.",
				[]string{"credential", "state"}, nil),
		},
		passwordExpired: &passwordExpiredCollector{
			sessions: sessions,
			desc: prometheus.NewDesc("erply_sessiond_password_expired",
				"1 when the last login reply of the credential said its password expired (isPasswordExpired), else 0 (absent while it has no session).",
				[]string{"credential"}, nil),
		},
	}
}

// statusSlots are the statuses the API answers; each route keeps their
// counters at hand so that counting a request allocates nothing.
var statusSlots = [...]int{200, 204, 301, 400, 403, 404, 405, 412, 413, 500, 503}

func slotOf(status int) int {
	for i, c := range statusSlots {
		if c == status {
			return i
		}
	}
	return -1
}

// routeCounters are one route's request counters, made on first use so
// that only statuses that happened are exported.
type routeCounters struct {
	vec   *prometheus.CounterVec
	route string
	slots [len(statusSlots)]atomic.Pointer[prometheus.Counter]
}

func (m *metrics) forRoute(route string) *routeCounters {
	return &routeCounters{vec: m.requests, route: route}
}

func (rc *routeCounters) inc(status int) {
	i := slotOf(status)
	if i < 0 {
		rc.vec.WithLabelValues(rc.route, strconv.Itoa(status)).Inc()
		return
	}
	c := rc.slots[i].Load()
	if c == nil {
		// Racing first uses store the same child counter.
		cv := rc.vec.WithLabelValues(rc.route, strconv.Itoa(status))
		c = &cv
		rc.slots[i].Store(c)
	}
	(*c).Inc()
}

// expiryCollector exports each credential's session expiry and state from
// the pool's snapshots at scrape time, so a credential removed by a reload
// disappears from the scrape with it.
type expiryCollector struct {
	sessions Sessions
	now      func() time.Time
	desc     *prometheus.Desc
	state    *prometheus.Desc
}

// states are the values of the state label, each exported for every credential.
var states = [...]pool.State{pool.StateStarting, pool.StateOK, pool.StateRefreshing, pool.StateFailing, pool.StateExpired}

// Describe implements prometheus.Collector.
func (c *expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc; ch <- c.state }

// Collect implements prometheus.Collector.
func (c *expiryCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	for _, snap := range c.sessions.Snapshots() {
		if snap == nil {
			continue
		}
		cur := stateAt(snap, now)
		for _, st := range states {
			v := 0.0
			if st == cur {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, snap.Name, string(st))
		}
		if snap.Session == nil || snap.ExpiresAt.IsZero() {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue,
			float64(snap.ExpiresAt.UnixMilli())/1e3, snap.Name)
	}
}

// passwordExpiredCollector exports whether each credential's last login
// said its password expired, from the pool's snapshots at scrape time.
type passwordExpiredCollector struct {
	sessions Sessions
	desc     *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c *passwordExpiredCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *passwordExpiredCollector) Collect(ch chan<- prometheus.Metric) {
	for _, snap := range c.sessions.Snapshots() {
		if snap == nil || snap.Session == nil {
			continue
		}
		v := 0.0
		if snap.Session.PasswordExpired {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, snap.Name)
	}
}
