// Package sdnotify owns the daemon's side of the systemd protocols: sd_notify readiness, status and watchdog messages, and socket activation.
package sdnotify

import (
	"context"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
)

// Notifier sends sd_notify messages to the service manager. Every method is a
// no-op when NOTIFY_SOCKET was not set (a shell, a container, a test), so
// callers never need to ask. Sending failures are logged at debug level and
// otherwise ignored: the protocol has no reply, and a lost message is
// systemd's to time out on, not a reason for the daemon to stop.
//
// A Notifier is safe for concurrent use. The zero value is not usable; use New.
type Notifier struct {
	addr     *net.UnixAddr // nil: no service manager listening
	watchdog time.Duration // 0: no watchdog
	clk      clock.Clock
	log      zerolog.Logger

	mu     sync.Mutex // serialises sends so messages arrive in call order
	status string     // last STATUS= line sent
}

// New reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID through lookup
// (the daemon passes a lookup in the environment main read once; tests pass a
// map's) and returns a Notifier that times its watchdog pings with clk. A
// WATCHDOG_PID naming another process, or a WATCHDOG_USEC that is not a
// positive number, disables the watchdog (the latter with a warning), as
// sd_watchdog_enabled(3) does.
func New(lookup func(string) string, clk clock.Clock, logger zerolog.Logger) *Notifier {
	n := &Notifier{clk: clk, log: logger}
	if path := lookup("NOTIFY_SOCKET"); path != "" {
		// A leading '@' names an abstract socket; package net maps it
		// to the leading NUL the kernel expects.
		n.addr = &net.UnixAddr{Name: path, Net: "unixgram"}
	}
	n.watchdog = watchdogInterval(lookup, logger)
	return n
}

func watchdogInterval(lookup func(string) string, logger zerolog.Logger) time.Duration {
	usec := lookup("WATCHDOG_USEC")
	if usec == "" {
		return 0
	}
	if pid := lookup("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0 // meant for another process (we were forked off it)
	}
	v, err := strconv.ParseInt(usec, 10, 64)
	if err != nil || v <= 0 || v > math.MaxInt64/int64(time.Microsecond) {
		logger.Warn().Str("WATCHDOG_USEC", usec).Msg("ignoring the systemd watchdog: WATCHDOG_USEC is not a positive number of microseconds")
		return 0
	}
	return time.Duration(v) * time.Microsecond
}

// Enabled reports whether a service manager is listening (NOTIFY_SOCKET set).
func (n *Notifier) Enabled() bool { return n.addr != nil }

// WatchdogInterval is the watchdog timeout systemd set (WatchdogSec=), or 0
// when there is none or no one to ping.
func (n *Notifier) WatchdogInterval() time.Duration {
	if n.addr == nil {
		return 0
	}
	return n.watchdog
}

// Ready tells systemd that start-up (or a reload) has finished: READY=1.
// Call it once the socket is listening and the first login round is over.
func (n *Notifier) Ready() { n.send(daemon.SdNotifyReady) }

// Reloading tells systemd that a reload has begun: RELOADING=1 with
// MONOTONIC_USEC, which Type=notify-reload requires and Type=notify ignores.
// Follow it with Ready when the reload is done, whether or not it succeeded.
func (n *Notifier) Reloading() {
	msg := daemon.SdNotifyReloading
	if mono := daemon.SdNotifyMonotonicUsec(); mono != "" {
		msg += "\n" + strings.TrimSuffix(mono, "\n")
	}
	n.send(msg)
}

// Stopping tells systemd that shutdown has begun: STOPPING=1.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Status sets the one-line status `systemctl status` shows (STATUS=). It
// sends only when line differs from the last status sent, so callers may
// call it on every state change without flooding the manager. Newlines in
// line are replaced by spaces: a newline would end the assignment.
func (n *Notifier) Status(line string) {
	if n.addr == nil {
		return
	}
	line = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(line)
	n.mu.Lock()
	defer n.mu.Unlock()
	if line == n.status {
		return
	}
	if n.sendLocked("STATUS=" + line) {
		n.status = line
	}
}

// RunWatchdog sends WATCHDOG=1 every half WatchdogInterval, timed by the
// injected clock, until ctx ends; a ping is skipped (and logged) while alive
// reports false, so systemd restarts a daemon that has stopped serving. alive
// must answer for the daemon itself, not for Erply: an upstream outage is no
// reason for a restart. Without a watchdog it returns at once. It always
// returns nil, so it fits an errgroup.
func (n *Notifier) RunWatchdog(ctx context.Context, alive func() bool) error {
	interval := n.WatchdogInterval() / 2
	if interval <= 0 {
		return nil
	}
	for {
		t := n.clk.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
		if alive() {
			n.send(daemon.SdNotifyWatchdog)
		} else {
			n.log.Warn().Msg("not pinging the systemd watchdog: the daemon reports itself unhealthy")
		}
	}
}

func (n *Notifier) send(state string) {
	if n.addr == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sendLocked(state)
}

// sendLocked writes one datagram, as sd_notify(3) does: one connection per
// message keeps no socket open across a manager re-exec. It reports success.
func (n *Notifier) sendLocked(state string) bool {
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err == nil {
		_, err = conn.Write([]byte(state))
		if cerr := conn.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		// The state names the message only: STATUS lines carry
		// credential states, never secrets, but keep the log short.
		kind, _, _ := strings.Cut(state, "=")
		n.log.Debug().Err(err).Str("message", kind).Msg("sd_notify failed")
		return false
	}
	return true
}
