// Command fleet measures what fleet mode buys and costs: Erply logins per hour for fleets of N daemons sharing one credential with and without fleet mode, and the idle RSS of a daemon with 100 credentials with fleet mode on and off.
//
// Usage (from the repository, which it builds the daemon from unless
// -daemon names a binary):
//
//	go run ./bench/fleet [-n 1,5,20] [-hours 6] [-step 10s] [-creds 100] [-rounds 3] [-settle 2s] [-daemon PATH]
//
// Logins per hour: N in-process daemons (each its own pool, upstream
// client, fake clock and, in fleet mode, fleet) share one password
// credential of upstream/erplytest's fake Erply, which grants 1 h sessions
// as Erply does by default. Every clock — Erply's and each daemon's — starts
// together and is stepped -step at a time through -hours simulated hours;
// after each step the run waits (woken by the pools' snapshots, not by
// polling) until every daemon whose refresh was due holds its next session,
// so that no daemon runs ahead of a login in flight. Redis is real time
// (pub/sub and locks in milliseconds), the sessions' lives are simulated.
// The fake counts verifyUser per configuration (each has an account of its
// own). It also checks at every step that every daemon holds a session
// valid past its margin.
//
// RSS: the built daemon runs as a process with -creds credentials (pairs of
// a password and a PIN credential, one account per pair, as bench/fakeerply
// seeds them) against the fake in this process, with fleet mode off and on
// alternately, -rounds times each; VmRSS is read -settle after READY=1 and
// the medians are printed side by side with their difference (target: at
// most 4 MiB more with fleet mode on).
//
// Redis is a redis-server on a Unix socket in a temporary directory when
// one is installed, else miniredis in this process (said in the output).
package main

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/fleet"
	"github.com/erply-sessiond/erply-sessiond/internal/sessiondtest"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// TargetRSSDelta is the most fleet mode may add to a daemon's idle RSS.
const TargetRSSDelta = 4 << 20

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	sizes := fs.String("n", "1,5,20", "fleet sizes (daemons sharing one credential), comma-separated")
	hours := fs.Int("hours", 6, "simulated hours of refreshes after the start")
	step := fs.Duration("step", 10*time.Second, "simulated time per clock step")
	creds := fs.Int("creds", 100, "credentials of the daemon whose RSS is measured")
	rounds := fs.Int("rounds", 3, "starts of the daemon per mode for the RSS")
	settle := fs.Duration("settle", 2*time.Second, "wait between READY=1 and reading VmRSS")
	bin := fs.String("daemon", "", "erply-sessiond binary (default: build it from this repository)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var ns []int
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 100 {
			return fmt.Errorf("-n %q: want fleet sizes of 1 to 100", *sizes)
		}
		ns = append(ns, n)
	}
	if *hours < 1 || *step < time.Second || *step > 5*time.Minute || *creds < 1 || *creds > 1000 || *rounds < 1 || *settle < 0 {
		return fmt.Errorf("-hours %d (≥ 1), -step %v (1s..5m), -creds %d (1..1000), -rounds %d (≥ 1), -settle %v (≥ 0)", *hours, *step, *creds, *rounds, *settle)
	}
	dir, err := os.MkdirTemp("", "sdf") // short: Unix socket paths are limited to about 108 bytes
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	rds, err := startRedis(dir)
	if err != nil {
		return err
	}
	defer rds.stop()
	keyFile := filepath.Join(dir, "fleet.keys")
	if err := writeKeyring(keyFile); err != nil {
		return err
	}
	fleet.SetRedisLogger(zerolog.Nop())
	fmt.Fprintf(stdout, "Redis: %s\n", rds.what)

	fmt.Fprintf(stdout, "\n== Erply logins per hour: one password credential shared by N daemons; 1 h sessions; %d simulated hours after the start, clocks stepped %v\n", *hours, *step)
	var results []loginFigures
	for _, n := range ns {
		for _, on := range []bool{false, true} {
			lf, err := simulate(ctx, n, on, *hours, *step, rds.url, keyFile)
			if err != nil {
				return fmt.Errorf("%d daemons, fleet mode %s: %w", n, onOff(on), err)
			}
			results = append(results, lf)
		}
	}
	writeLogins(stdout, results)

	if *bin == "" {
		if *bin, err = sessiondtest.Build(ctx, dir); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "\n== idle RSS of the daemon with %d credentials (VmRSS %v after READY=1, median of %d starts each, alternating)\n", *creds, *settle, *rounds)
	off, on, err := measureRSS(ctx, *bin, dir, rds.url, keyFile, *creds, *rounds, *settle)
	if err != nil {
		return err
	}
	writeRSS(stdout, off, on)
	return nil
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// loginFigures is one configuration's count of logins.
type loginFigures struct {
	daemons int
	fleet   bool
	hours   int
	atStart int // verifyUser calls until every daemon held a session
	after   int // verifyUser calls over the simulated hours after that
	invalid int // daemon-steps without a session valid past its margin
}

func (l loginFigures) perHour() float64 { return float64(l.after) / float64(l.hours) }

// simDaemon is one in-process daemon of the simulation.
type simDaemon struct {
	clk   *clock.Fake
	up    *upstream.Client
	pool  *pool.Pool
	fleet *fleet.Fleet
}

func (d *simDaemon) close() {
	d.pool.Close()
	if d.fleet != nil {
		d.fleet.Close()
	}
	d.up.CloseIdleConnections()
}

var simStart = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

// simulate runs n daemons sharing one credential, with or without fleet
// mode, through hours simulated hours and counts their logins.
func simulate(ctx context.Context, n int, fleetOn bool, hours int, step time.Duration, redisURL, keyFile string) (loginFigures, error) {
	lf := loginFigures{daemons: n, fleet: fleetOn, hours: hours}
	erplyClk := clock.NewFake(simStart)
	fake := erplytest.New(erplyClk)
	defer fake.Close()
	const code = "104729"
	fake.AddAccount(code).AddUser(erplytest.User{Username: "manager@shop.example", Password: "bench-password-1", UserID: 3, EmployeeID: 3, GroupID: 1})
	cred := config.Credential{
		Name: "pos", Kind: config.KindPassword, ClientCode: code, APIURL: fake.APIURL(),
		Username: "manager@shop.example", Password: config.Secret{Value: "bench-password-1", Var: "SESSIOND_POS_PASSWORD"},
		SessionLength: 3600,
	}
	fleetName := fmt.Sprintf("bench-%d-%d", n, time.Now().UnixNano())
	log := zerolog.Nop()
	ds := make([]*simDaemon, 0, n)
	defer func() {
		for _, d := range ds {
			d.close()
		}
	}()
	for i := range n {
		clk := clock.NewFake(simStart)
		up := upstream.New(upstream.Options{Logger: log, RetryMax: -1, Clock: clk})
		policy := refresher.Default()
		rng := rand.New(rand.NewPCG(uint64(i)+1, 7))
		var rmu sync.Mutex
		policy.Float64 = func() float64 { rmu.Lock(); defer rmu.Unlock(); return rng.Float64() }
		d := &simDaemon{clk: clk, up: up}
		methodFor := login.Methods(up)
		var renewer pool.Renewer
		if fleetOn {
			f, err := fleet.New(fleet.Options{
				Config: config.Fleet{RedisURL: config.Secret{Value: redisURL}, Name: fleetName, KeyFile: keyFile, LockTTL: config.DefaultFleetLockTTL},
				Clock:  clk, Policy: policy, Logger: log, Float64: rand.New(rand.NewPCG(uint64(i)+1, 11)).Float64,
			})
			if err != nil {
				return lf, err
			}
			d.fleet = f
			methodFor, renewer = f.Methods(methodFor), f
		}
		p, err := pool.New(pool.Options{MethodFor: methodFor, Upstream: up, Renewer: renewer,
			Credentials: []config.Credential{cred}, Clock: clk, Policy: policy, Logger: log})
		if err != nil {
			if d.fleet != nil {
				d.fleet.Close()
			}
			return lf, err
		}
		d.pool = p
		ds = append(ds, d)
		if d.fleet != nil {
			if err := d.fleet.Open(p); err != nil {
				return lf, err
			}
		}
	}
	// The start: every daemon at once, as a rollout does.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = d.pool.Open(ctx) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return lf, err
	}
	lf.atStart = fake.CallsFor(code, "verifyUser")

	changed := make(chan struct{}, 1)
	for _, d := range ds {
		defer d.pool.Subscribe(func(*pool.Snapshot) {
			select {
			case changed <- struct{}{}:
			default:
			}
		})()
	}
	for done := time.Duration(0); done < time.Duration(hours)*time.Hour; done += step {
		erplyClk.Advance(step)
		for _, d := range ds {
			d.clk.Advance(step)
		}
		if err := settle(ctx, ds, changed); err != nil {
			return lf, fmt.Errorf("at %v: %w", done+step, err)
		}
		for _, d := range ds {
			s, _ := d.pool.Snapshot("pos")
			if !s.Valid(d.clk.Now(), d.pool.MarginOf(s)) {
				lf.invalid++
			}
		}
	}
	lf.after = fake.CallsFor(code, "verifyUser") - lf.atStart
	return lf, nil
}

// settle waits until no daemon's refresh is overdue: each holds a session
// whose refresh point is ahead of its clock.
func settle(ctx context.Context, ds []*simDaemon, changed <-chan struct{}) error {
	limit := time.NewTimer(30 * time.Second)
	defer limit.Stop()
	for {
		due := 0
		for _, d := range ds {
			s, _ := d.pool.Snapshot("pos")
			if !s.RefreshAt.After(d.clk.Now()) {
				due++
			}
		}
		if due == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-limit.C:
			return fmt.Errorf("%d daemons still due a refresh after 30 s", due)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func writeLogins(w io.Writer, rs []loginFigures) {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "daemons\tfleet off: at start\tper hour\tfleet on: at start\tper hour\tfleet on / off\t")
	for i := 0; i+1 < len(rs); i += 2 {
		off, on := rs[i], rs[i+1]
		ratio := "-"
		if off.perHour() > 0 {
			ratio = fmt.Sprintf("%.2f", on.perHour()/off.perHour())
		}
		fmt.Fprintf(tw, "%d\t%d\t%.2f\t%d\t%.2f\t%s\t\n", off.daemons, off.atStart, off.perHour(), on.atStart, on.perHour(), ratio)
	}
	_ = tw.Flush()
	invalid := 0
	for _, r := range rs {
		invalid += r.invalid
	}
	fmt.Fprintf(w, "(per hour: verifyUser calls over the %d simulated hours after the start, divided by %d; daemon-steps without a valid session: %d)\n",
		rs[0].hours, rs[0].hours, invalid)
}

// rssFigures are one daemon start's memory, in KiB.
type rssFigures struct{ rss, anon int }

// measureRSS starts the daemon with creds credentials, fleet mode off and
// on alternately, rounds times each, and returns the figures per mode.
func measureRSS(ctx context.Context, bin, dir, redisURL, keyFile string, creds, rounds int, settle time.Duration) (off, on []rssFigures, err error) {
	fake := erplytest.New(clock.Real{})
	defer fake.Close()
	env := seed(fake, creds)
	socket := filepath.Join(dir, "d.sock")
	for r := range rounds {
		for _, fleetOn := range []bool{false, true} {
			e := slices.Clone(env)
			if fleetOn {
				// A fleet name of its own per start: each is the fleet's
				// first daemon, logging in and publishing every credential.
				e = append(e, "SESSIOND_FLEET_REDIS_URL="+redisURL, "SESSIOND_FLEET_KEY_FILE="+keyFile,
					fmt.Sprintf("SESSIOND_FLEET_NAME=rss%d", r))
			}
			f, err := startAndMeasure(ctx, bin, socket, e, settle)
			if err != nil {
				return nil, nil, fmt.Errorf("fleet mode %s, start %d: %w", onOff(fleetOn), r+1, err)
			}
			if fleetOn {
				on = append(on, f)
			} else {
				off = append(off, f)
			}
		}
	}
	return off, on, nil
}

func startAndMeasure(ctx context.Context, bin, socket string, env []string, settle time.Duration) (rssFigures, error) {
	var f rssFigures
	d, err := sessiondtest.Start(ctx, sessiondtest.Options{Binary: bin, Socket: socket, Env: env, ReadyTimeout: 2 * time.Minute})
	if err != nil {
		return f, err
	}
	t := time.NewTimer(settle)
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	f.rss, err = procStatus(d.PID(), "VmRSS")
	if err == nil {
		f.anon, err = procStatus(d.PID(), "RssAnon")
	}
	if serr := d.Stop(); err == nil {
		err = serr
	}
	if err == nil {
		err = ctx.Err()
	}
	return f, err
}

// procStatus reads a "Name: N kB" field of /proc/PID/status, in KiB.
func procStatus(pid int, field string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

func medianOf(fs []rssFigures, pick func(rssFigures) int) int {
	xs := make([]int, len(fs))
	for i, f := range fs {
		xs[i] = pick(f)
	}
	slices.Sort(xs)
	return xs[len(xs)/2]
}

func writeRSS(w io.Writer, off, on []rssFigures) {
	mib := func(kib int) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }
	rss := func(f rssFigures) int { return f.rss }
	anon := func(f rssFigures) int { return f.anon }
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tfleet off\tfleet on\tdifference\ttarget\t")
	dRSS := medianOf(on, rss) - medianOf(off, rss)
	status := "met"
	if dRSS*1024 > TargetRSSDelta {
		status = "NOT MET"
	}
	fmt.Fprintf(tw, "VmRSS\t%s\t%s\t%+.1f MiB\t≤ +%d MiB: %s\t\n", mib(medianOf(off, rss)), mib(medianOf(on, rss)), float64(dRSS)/1024, TargetRSSDelta>>20, status)
	fmt.Fprintf(tw, "RssAnon (heap, stacks)\t%s\t%s\t%+.1f MiB\t\t\n", mib(medianOf(off, anon)), mib(medianOf(on, anon)), float64(medianOf(on, anon)-medianOf(off, anon))/1024)
	_ = tw.Flush()
}

// seed adds n credentials to fake, in pairs per account (a password
// credential and a PIN credential on it), and returns the daemon's
// environment for them.
func seed(fake *erplytest.Server, n int) []string {
	env := []string{"SESSIOND_API_URL=" + fake.APIURL(), "SESSIOND_LOG_LEVEL=warn"}
	var names []string
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
	return append(env, "SESSIOND_CREDENTIALS="+strings.Join(names, ","))
}

// writeKeyring writes a fleet keyring of one fresh key.
func writeKeyring(path string) error {
	b := make([]byte, 32)
	_, _ = crand.Read(b)
	return os.WriteFile(path, []byte("bench "+base64.StdEncoding.EncodeToString(b)+"\n"), 0o600)
}

// redisProc is the Redis the run uses.
type redisProc struct {
	what string // for the output
	url  string
	stop func()
}

// startRedis runs redis-server on a Unix socket in dir, without
// persistence, or — when it is not installed — miniredis in this process.
func startRedis(dir string) (*redisProc, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		mr := miniredis.NewMiniRedis()
		if err := mr.Start(); err != nil {
			return nil, err
		}
		return &redisProc{what: "miniredis in this process (redis-server is not installed)", url: "redis://" + mr.Addr(), stop: mr.Close}, nil
	}
	sock := filepath.Join(dir, "r.sock")
	cmd := exec.Command("redis-server", "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", dir, "--loglevel", "warning", "--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() { _ = cmd.Process.Kill(); <-exited }
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: sock, Protocol: 2, DisableIdentity: true, MaxRetries: -1})
	defer rdb.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, err := rdb.Info(context.Background(), "server").Result()
		if err == nil {
			version := "redis-server"
			for line := range strings.Lines(info) {
				if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
					version += " " + v
				}
			}
			return &redisProc{what: version + " on a Unix socket", url: "unix://" + sock, stop: stop}, nil
		}
		select {
		case <-exited:
			return nil, errors.New("redis-server exited at start")
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, errors.New("redis-server did not answer within 5 s")
		}
	}
}
