package fleet

import "github.com/prometheus/client_golang/prometheus"

// metrics are the fleet's; labels carry credential names, never secrets.
type metrics struct {
	up              prometheus.Gauge
	published       *prometheus.CounterVec
	adopted         *prometheus.CounterVec
	decryptFailures *prometheus.CounterVec
	lockWaits       *prometheus.CounterVec
	localLogins     *prometheus.CounterVec
	held            *prometheus.CounterVec
}

// Reasons of erply_sessiond_fleet_local_logins_total.
const (
	reasonRedis      = "redis_unreachable"
	reasonUnreadable = "unreadable_record"
	reasonKeptLocal  = "kept_local"
)

func newMetrics() metrics {
	cv := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "erply_sessiond_fleet_" + name, Help: help}, labels)
	}
	return metrics{
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "erply_sessiond_fleet_redis_up",
			Help: "0 from a failed Redis command (unreachable, or refusing this daemon) until one succeeds again, else 1.",
		}),
		published:       cv("published_total", "Sessions this daemon published to the fleet, by credential.", "credential"),
		adopted:         cv("adopted_total", "Sessions this daemon adopted from the fleet instead of logging in, by credential.", "credential"),
		decryptFailures: cv("decrypt_failures_total", "Shared records this daemon could not open (other key or credential), by credential.", "credential"),
		lockWaits:       cv("lock_waits_total", "Logins that waited for another daemon holding the credential's lock, by credential.", "credential"),
		localLogins:     cv("local_logins_total", "Logins made without the fleet, by credential and reason.", "credential", "reason"),
		held:            cv("held_total", "Logins not attempted because of a fleet-wide failure hold, by credential.", "credential"),
	}
}

func (m metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.up, m.published, m.adopted, m.decryptFailures, m.lockWaits, m.localLogins, m.held} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// touch makes a credential's series visible at zero.
func (m metrics) touch(name string) {
	m.published.WithLabelValues(name)
	m.adopted.WithLabelValues(name)
	m.decryptFailures.WithLabelValues(name)
	m.lockWaits.WithLabelValues(name)
	m.held.WithLabelValues(name)
}
