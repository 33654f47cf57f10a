package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/client"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// Soak settings. SOAK=1 runs the long form (SOAK_DURATION, default 5 min)
// even with -short; without it the short form (5 s) runs in every plain
// `go test` and -short skips it. SOAK_SEED replays a run's faults.
const (
	soakClients       = 50
	soakSessionLength = 6 * time.Second
	// soakMargin is what EXPIRY_MARGIN becomes for 6 s sessions: a sixth
	// of the lifetime, never under a second.
	soakMargin = time.Second
)

// soakStats is what the clients and the fault goroutine count.
type soakStats struct {
	served  atomic.Int64 // keys served and found live at the fake
	expired atomic.Int64 // keys found dead at the fake within the margin of being served
	late    atomic.Int64 // keys found dead, but checked later than the margin (inconclusive)

	mu       sync.Mutex
	errs     map[string]int // error answers by kind
	faults   map[string]int // faults injected by kind
	faultFor time.Duration  // total time some fault was on
	first    []string       // the first few expired keys' stories
}

func (s *soakStats) count(m map[string]int, kind string) {
	s.mu.Lock()
	m[kind]++
	s.mu.Unlock()
}

func soakDuration(t *testing.T) time.Duration {
	long := os.Getenv("SOAK") == "1"
	if testing.Short() && !long {
		t.Skip("the soak test runs without -short, or with SOAK=1")
	}
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("SOAK_DURATION=%q: %v", v, err)
		}
		return d
	}
	if long {
		return 5 * time.Minute
	}
	return 5 * time.Second
}

// TestSoak runs the daemon on the real clock with 6-second sessions (pos,
// and cashier by PIN on top of it) while 50 clients read keys through the
// socket and check every key at the fake, and a goroutine switches random
// upstream faults on and off (HTTP 503, Erply 1000, latency, dropped
// connections), some outlasting a session. No key served may be dead at
// the fake; 503s are counted by kind; logins are compared with the ideal
// of one per 0.67 of a session.
func TestSoak(t *testing.T) {
	duration := soakDuration(t)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("SOAK_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("SOAK_SEED=%q: %v", v, err)
		}
	}
	length := strconv.Itoa(int(soakSessionLength / time.Second))
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	d := startDaemon(t, daemonOptions{
		realClock: true,
		env: map[string]string{
			"SESSIOND_LOG_LEVEL":              "info",
			"SESSIOND_POS_SESSION_LENGTH":     length,
			"SESSIOND_CASHIER_SESSION_LENGTH": length,
		},
		upstream: &upstream.Options{
			RetryMax: 2, RetryWaitMin: 5 * time.Millisecond, RetryWaitMax: 50 * time.Millisecond,
			RateLimitWait: 50 * time.Millisecond,
			// A latency fault longer than this is a failed attempt.
			HTTPClient: &http.Client{Transport: tr, Timeout: 1500 * time.Millisecond},
		},
	})
	names := []string{"pos", "cashier"}
	st := &soakStats{errs: map[string]int{}, faults: map[string]int{}}
	ctx, cancel := context.WithTimeout(t.Context(), duration)
	defer cancel()
	startCalls := map[string]int{"verifyUser": d.fake.Calls("verifyUser"), "switchUser": d.fake.Calls("switchUser")}
	startOK := soakLoginsOK(t, d)
	began := time.Now()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		soakFaults(ctx, d.fake, rand.New(rand.NewPCG(seed, 1)), st)
	}()
	for i := range soakClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			soakClient(ctx, d, rand.New(rand.NewPCG(seed, uint64(i)+2)), names[i%len(names)], i%2 == 0, st)
		}()
	}
	wg.Wait()
	elapsed := time.Since(began)
	d.fake.ClearFaults()

	okNow := soakLoginsOK(t, d)
	ideal := elapsed.Seconds() / (0.67 * soakSessionLength.Seconds())
	calls := map[string]string{"pos": "verifyUser", "cashier": "switchUser"}
	var logins []string
	for _, n := range names {
		attempts := d.fake.Calls(calls[n]) - startCalls[calls[n]]
		ok := okNow[n] - startOK[n]
		logins = append(logins, fmt.Sprintf("%s %d ok of %d attempts (ideal %.0f, ratio %.2f)", n, ok, attempts, ideal, float64(ok)/ideal))
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	var errs, faults []string
	errTotal := 0
	for k, v := range st.errs {
		errs = append(errs, fmt.Sprintf("%s=%d", k, v))
		errTotal += v
	}
	for k, v := range st.faults {
		faults = append(faults, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(errs)
	sort.Strings(faults)
	t.Logf("soak summary: %v, %d clients, seed %d: %d keys served, %d expired, %d checked late; %d errors [%s]; faults on %v of it [%s]; logins: %s",
		elapsed.Round(time.Second), soakClients, seed, st.served.Load(), st.expired.Load(), st.late.Load(),
		errTotal, strings.Join(errs, " "), st.faultFor.Round(time.Second), strings.Join(faults, " "), strings.Join(logins, "; "))

	if n := st.expired.Load(); n > 0 {
		t.Errorf("%d keys served that the fake says were dead within %v of serving:\n%s", n, soakMargin, strings.Join(st.first, "\n"))
	}
	for kind := range st.errs {
		if !strings.HasPrefix(kind, "503 ") {
			t.Errorf("error answers other than 503: %s", kind)
		}
	}
	if st.served.Load() == 0 {
		t.Error("no key served")
	}
	if ok := okNow["pos"] - startOK["pos"]; float64(ok) > 2*ideal+2 {
		t.Errorf("pos logged in %d times in %v; the ideal is %.0f", ok, elapsed, ideal)
	}
}

// soakClient reads a credential's key (text route, or the JSON route when
// json) until ctx ends, with a short random pause between reads, and checks
// each key at the fake.
func soakClient(ctx context.Context, d *testDaemon, rnd *rand.Rand, name string, json bool, st *soakStats) {
	c := client.New(d.socket)
	defer c.CloseIdleConnections()
	for ctx.Err() == nil {
		asked := time.Now()
		var key string
		var err error
		if json {
			var s *client.Session
			if s, err = c.Session(ctx, name); err == nil {
				key = s.SessionKey
			}
		} else {
			key, err = c.Key(ctx, name)
		}
		switch {
		case err == nil:
			if d.fake.SessionValid(key) {
				st.served.Add(1)
			} else if took := time.Since(asked); took < soakMargin {
				st.expired.Add(1)
				st.mu.Lock()
				if len(st.first) < 5 {
					st.first = append(st.first, fmt.Sprintf("%s: key %s dead %v after asking", name, key[:8], took))
				}
				st.mu.Unlock()
			} else {
				st.late.Add(1)
			}
		case ctx.Err() != nil:
			return
		default:
			var ce *client.Error
			kind := "transport: " + err.Error()
			if errors.As(err, &ce) {
				kind = fmt.Sprintf("%d %s", ce.Status, ce.Code)
				if ce.ErplyCode != 0 {
					kind += fmt.Sprintf(" (erply %d)", ce.ErplyCode)
				}
			}
			st.count(st.errs, kind)
		}
		t := time.NewTimer(time.Duration(5+rnd.IntN(20)) * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// soakFaults switches random faults on the fake on and off until ctx ends:
// 3–20 s of calm (1–3 s the first time), then a fault for 0.5–9 s (a
// session is 6 s).
func soakFaults(ctx context.Context, fake *erplytest.Server, rnd *rand.Rand, st *soakStats) {
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	calm := time.Second + time.Duration(rnd.Int64N(int64(2*time.Second))) // the short form sees a fault too
	for {
		if !wait(calm) {
			return
		}
		var f erplytest.Fault
		var kind string
		switch rnd.IntN(4) {
		case 0:
			f, kind = erplytest.Fault{HTTPStatus: http.StatusServiceUnavailable}, "http_503"
		case 1:
			f, kind = erplytest.Fault{ErplyCode: upstream.CodeMaintenance}, "erply_1000"
		case 2:
			f = erplytest.Fault{Latency: 300*time.Millisecond + time.Duration(rnd.Int64N(int64(1700*time.Millisecond)))}
			kind = "latency"
		default:
			f, kind = erplytest.Fault{Drop: true}, "drop"
		}
		on := 500*time.Millisecond + time.Duration(rnd.Int64N(int64(8500*time.Millisecond)))
		fake.Inject(f)
		st.count(st.faults, kind)
		since := time.Now()
		ok := wait(on)
		fake.ClearFaults()
		st.mu.Lock()
		st.faultFor += time.Since(since)
		st.mu.Unlock()
		if !ok {
			return
		}
		calm = 3*time.Second + time.Duration(rnd.Int64N(int64(17*time.Second)))
	}
}

// soakLoginsOK reads erply_sessiond_logins_total{result="ok"} by credential.
func soakLoginsOK(t *testing.T, d *testDaemon) map[string]int {
	t.Helper()
	mfs, err := d.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, mf := range mfs {
		if mf.GetName() != "erply_sessiond_logins_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["result"] == "ok" {
				out[labels["credential"]] += int(m.GetCounter().GetValue())
			}
		}
	}
	return out
}
