// Command restart measures what a restart of the daemon costs with and without its state directory: upstream logins, checks, and the time from process start to the socket listening, to the first key and to READY=1.
//
// Usage (from the repository, which it builds the daemon from unless
// -daemon names a binary):
//
//	go run ./bench/restart [-creds 100] [-latency 100ms] [-rounds 3] [-daemon PATH]
//
// upstream/erplytest's fake Erply runs in this process with -creds
// credentials in pairs, each pair in an account of its own: a password
// credential (pos, pos_2, …) and a PIN credential on top of it (cashier,
// cashier_2, …), as bench/fakeerply seeds them. Every upstream call waits
// -latency before it is answered, standing in for the network and Erply's
// own time. Two daemons are measured in the same run, one without a state
// directory and one with: each is started once (logging every credential
// in) and stopped with SIGTERM, then restarted -rounds times, the two
// alternating. For each restart it counts the logins (verifyUser +
// switchUser) and getSessionKeyInfo calls the fake received, the
// credentials still served the key they had before, and times, from the
// process start: the socket accepting connections, the first session key
// (pos's, asked for as soon as the socket accepts) and READY=1 (every
// credential holds a session). It prints the medians side by side.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/erply-sessiond/erply-sessiond/client"
	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/internal/sessiondtest"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "restart:", err)
		os.Exit(1)
	}
}

// restartFigures is what one restart cost.
type restartFigures struct {
	logins, checks, kept int
	socket, firstKey     time.Duration
	ready                time.Duration
}

// mode is one of the two daemons measured.
type mode struct {
	name     string
	env      []string // the daemon's environment, state directory included or not
	stateDir string   // "" without one
	keys     map[string]string
	runs     []restartFigures
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("restart", flag.ContinueOnError)
	creds := fs.Int("creds", 100, "credentials (pairs of a password and a PIN credential)")
	latency := fs.Duration("latency", 100*time.Millisecond, "added to every upstream call")
	rounds := fs.Int("rounds", 3, "restarts measured per daemon")
	bin := fs.String("daemon", "", "erply-sessiond binary (default: build it from this repository)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *creds < 1 || *creds > 1000 || *rounds < 1 || *latency < 0 {
		return fmt.Errorf("-creds %d (1..1000), -rounds %d (≥ 1), -latency %v (≥ 0)", *creds, *rounds, *latency)
	}
	dir, err := os.MkdirTemp("", "sdr") // short: Unix socket paths are limited to about 108 bytes
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if *bin == "" {
		if *bin, err = sessiondtest.Build(ctx, dir); err != nil {
			return err
		}
	}

	fake := erplytest.New(clock.Real{})
	defer fake.Close()
	env, names := seed(fake, *creds)
	if *latency > 0 {
		fake.Inject(erplytest.Fault{Latency: *latency})
	}
	stateDir := filepath.Join(dir, "state")
	modes := []*mode{
		{name: "without state dir", env: env},
		{name: "with state dir", env: append(slices.Clone(env), "SESSIOND_STATE_DIR="+stateDir), stateDir: stateDir},
	}
	fmt.Fprintf(stdout, "restart of a daemon with %d credentials, fake Erply with %v added to every call, %d restarts each\n", *creds, *latency, *rounds)
	socket := filepath.Join(dir, "d.sock")
	for _, m := range modes {
		// The first start logs every credential in (and fills the state file).
		f, keys, err := restartOnce(ctx, *bin, socket, m.env, names, fake)
		if err != nil {
			return fmt.Errorf("%s, first start: %w", m.name, err)
		}
		m.keys = keys
		fmt.Fprintf(stdout, "  %-18s first start: %d logins, ready after %v\n", m.name, f.logins, f.ready.Round(time.Millisecond))
	}
	for r := range *rounds {
		for _, m := range modes {
			f, keys, err := restartOnce(ctx, *bin, socket, m.env, names, fake)
			if err != nil {
				return fmt.Errorf("%s, restart %d: %w", m.name, r+1, err)
			}
			for n, k := range keys {
				if m.keys[n] == k {
					f.kept++
				}
			}
			m.keys = keys
			m.runs = append(m.runs, f)
		}
	}
	var stateSize int64
	if fi, err := os.Stat(filepath.Join(stateDir, "state.json")); err == nil {
		stateSize = fi.Size()
	}
	writeTable(stdout, modes, len(names), stateSize)
	return nil
}

// seed adds n credentials to fake, in pairs per account, and returns the
// daemon's environment for them and their names.
func seed(fake *erplytest.Server, n int) (env, names []string) {
	env = []string{"SESSIOND_API_URL=" + fake.APIURL(), "SESSIOND_LOG_LEVEL=warn"}
	for pair := 1; len(names) < n; pair++ {
		sfx, num := "", strconv.Itoa(pair)
		if pair > 1 {
			sfx = "_" + num
		}
		code := strconv.Itoa(500000 + pair)
		a := fake.AddAccount(code)
		pos, cashier := "pos"+sfx, "cashier"+sfx
		user, pw, pin := "manager@shop"+num+".example", "pw-"+code, strconv.Itoa(100000+pair)
		a.AddUser(erplytest.User{Username: user, Password: pw, UserID: 2*pair + 1, EmployeeID: 2*pair + 1, GroupID: 1})
		p := "SESSIOND_" + strings.ToUpper(pos) + "_"
		env = append(env, p+"CLIENT_CODE="+code, p+"USERNAME="+user, p+"PASSWORD="+pw)
		names = append(names, pos)
		if len(names) == n {
			break
		}
		a.AddUser(erplytest.User{Username: "cashier@shop" + num + ".example", PIN: pin, UserID: 2*pair + 2, EmployeeID: 2*pair + 2, GroupID: 3})
		p = "SESSIOND_" + strings.ToUpper(cashier) + "_"
		env = append(env, p+"KIND=pin", p+"PARENT="+pos, p+"PIN="+pin)
		names = append(names, cashier)
	}
	return append(env, "SESSIOND_CREDENTIALS="+strings.Join(names, ",")), names
}

// restartOnce starts the daemon, times it to the socket, pos's key and
// READY=1, counts the fake's calls until then, reads every credential's
// key, and stops it with SIGTERM.
func restartOnce(ctx context.Context, bin, socket string, env, names []string, fake *erplytest.Server) (restartFigures, map[string]string, error) {
	var f restartFigures
	fake.ResetCounters()
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	firsts := make(chan firstResult, 1)
	start := time.Now()
	go func() { firsts <- firstKey(pctx, socket, names[0], start) }()
	d, err := sessiondtest.Start(ctx, sessiondtest.Options{Binary: bin, Socket: socket, Env: env, ReadyTimeout: 2 * time.Minute})
	f.ready = time.Since(start)
	if err != nil {
		cancel()
		<-firsts
		return f, nil, err
	}
	fk := <-firsts
	if fk.err != nil {
		_ = d.Stop()
		return f, nil, fk.err
	}
	f.socket, f.firstKey = fk.socket, fk.key
	f.logins = fake.Calls("verifyUser") + fake.Calls("switchUser")
	f.checks = fake.Calls("getSessionKeyInfo")
	keys := make(map[string]string, len(names))
	for _, n := range names {
		k, err := d.Client.Key(ctx, n)
		if err != nil {
			_ = d.Stop()
			return f, nil, fmt.Errorf("key of %s: %w", n, err)
		}
		keys[n] = k
	}
	if err := d.Stop(); err != nil {
		return f, nil, err
	}
	return f, keys, nil
}

// firstResult is when the socket first accepted and the first key came,
// since the process start.
type firstResult struct {
	socket, key time.Duration
	err         error
}

// firstKey waits for the socket to accept a connection (trying every
// millisecond), then asks for name's key at once: the answer waits for
// the credential's first login if it has no session yet.
func firstKey(ctx context.Context, socket, name string, start time.Time) (r firstResult) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", socket)
		if err == nil {
			c.Close()
			break
		}
		if ctx.Err() != nil {
			r.err = ctx.Err()
			return r
		}
		t := time.NewTimer(time.Millisecond)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	r.socket = time.Since(start)
	cl := client.New(socket)
	defer cl.CloseIdleConnections()
	kctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := cl.Key(kctx, name); err != nil {
		r.err = fmt.Errorf("first key: %w", err)
		return r
	}
	r.key = time.Since(start)
	return r
}

func median[T int | time.Duration](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func writeTable(w io.Writer, modes []*mode, creds int, stateSize int64) {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	pick := func(m *mode, f func(restartFigures) time.Duration) string {
		xs := make([]time.Duration, len(m.runs))
		for i, r := range m.runs {
			xs[i] = f(r)
		}
		return fmt.Sprint(median(xs).Round(100 * time.Microsecond))
	}
	count := func(m *mode, f func(restartFigures) int) string {
		xs := make([]int, len(m.runs))
		for i, r := range m.runs {
			xs[i] = f(r)
		}
		return strconv.Itoa(median(xs))
	}
	fmt.Fprintf(tw, "median of each daemon's restarts\t%s\t%s\n", modes[0].name, modes[1].name)
	rows := []struct {
		label string
		cell  func(*mode) string
	}{
		{"logins (verifyUser + switchUser)", func(m *mode) string { return count(m, func(r restartFigures) int { return r.logins }) }},
		{"getSessionKeyInfo checks", func(m *mode) string { return count(m, func(r restartFigures) int { return r.checks }) }},
		{fmt.Sprintf("credentials keeping their key (of %d)", creds), func(m *mode) string { return count(m, func(r restartFigures) int { return r.kept }) }},
		{"start → socket accepts", func(m *mode) string { return pick(m, func(r restartFigures) time.Duration { return r.socket }) }},
		{"start → first key (pos)", func(m *mode) string { return pick(m, func(r restartFigures) time.Duration { return r.firstKey }) }},
		{"socket accepts → first key", func(m *mode) string {
			return pick(m, func(r restartFigures) time.Duration { return r.firstKey - r.socket })
		}},
		{"start → READY=1 (every credential)", func(m *mode) string { return pick(m, func(r restartFigures) time.Duration { return r.ready }) }},
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", row.label, row.cell(modes[0]), row.cell(modes[1]))
	}
	if stateSize > 0 {
		fmt.Fprintf(tw, "state.json size\t-\t%.1f KiB (%.1f KiB per credential)\n", float64(stateSize)/1024, float64(stateSize)/1024/float64(creds))
	}
	_ = tw.Flush()
}
