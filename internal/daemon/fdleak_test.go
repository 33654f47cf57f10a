package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/internal/faultproxy"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// fdSlack is how far the open-descriptor count may move between two
// measurements without counting as a leak (the runtime's own, e.g. epoll
// and timers, and a connection or two in the middle of closing).
const fdSlack = 5

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// quietFDs closes every idle kept-alive connection the test and the daemon
// hold, then waits (at most 5 s) for the far ends to close theirs and
// returns the settled count (unchanged for 100 ms). A server closes its end
// only once it reads the client's EOF, in its own goroutine, so the count
// settles a moment after the close, as goroutines do for goleak.
func quietFDs(t *testing.T, e *faultEnv) int {
	t.Helper()
	e.http.CloseIdleConnections()
	e.client.CloseIdleConnections()
	e.upstream.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	n, stable := openFDs(t), 0
	for stable < 10 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		m := openFDs(t)
		if m == n {
			stable++
		} else {
			n, stable = m, 0
		}
	}
	return n
}

// TestFDsFlat: 10 000 local requests (kept-alive and one connection each,
// on every route, good and bad) and 1 000 failed logins (every network
// fault of the proxy and Erply's) leave the number of open descriptors
// where it was.
func TestFDsFlat(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts /proc/self/fd")
	}
	e := startFaultDaemon(t, nil)
	paths := []string{
		"/v1/sessions/pos/key", "/v1/sessions/pos", "/v1/sessions", "/readyz", "/healthz",
		"/v1/sessions/pos/jwt", "/v1/sessions/nobody/key", "/no/such/route",
		"/v1/sessions/pos/endpoints/customerRegistryURLs", "/v1/sessions/pos/endpoints/cayanGatewayURLs/pick",
	}
	oneShot := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, "unix", e.socket)
		},
	}}
	request := func(c *http.Client, i int) error {
		var req *http.Request
		switch {
		case i%97 == 0:
			req, _ = http.NewRequest(http.MethodGet, "http://sessiond/metrics", nil)
		case i%13 == 0:
			req, _ = http.NewRequest(http.MethodPost, "http://sessiond/v1/sessions/pos/invalidate", strings.NewReader("key=stale"+fmt.Sprint(i)))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		default:
			req, _ = http.NewRequest(http.MethodGet, "http://sessiond"+paths[i%len(paths)], nil)
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
			return fmt.Errorf("%s: %d", req.URL.Path, resp.StatusCode)
		}
		return err
	}
	type fault struct {
		name    string
		on, off func()
	}
	var faults []fault
	for _, m := range []faultproxy.Mode{faultproxy.Reset, faultproxy.Truncate, faultproxy.ResetMidBody, faultproxy.Garbage} {
		faults = append(faults, fault{m.String(), func() { e.proxy.SetMode(m) }, func() { e.proxy.SetMode(faultproxy.Pass) }})
	}
	for _, f := range []erplytest.Fault{{HTTPStatus: 503}, {Drop: true}, {ErplyCode: 1000}, {HTTPStatus: 429}} {
		faults = append(faults, fault{fmt.Sprintf("erply %+v", f), func() { e.fake.Inject(f) }, e.fake.ClearFaults})
	}
	// fail makes n logins fail under the given faults in turn; the clock
	// moves a capped backoff step each time so the daemon tries again.
	fail := func(n int, fs []fault) {
		t.Helper()
		mark := e.attemptCount()
		for i := 0; e.attemptCount()-mark < n; i++ {
			f := fs[i%len(fs)]
			f.on()
			e.clk.Advance(transientMax + time.Second)
			if r := e.read(t); r.status != http.StatusServiceUnavailable {
				t.Fatalf("under %s: %d, want 503", f.name, r.status)
			}
			f.off()
		}
	}

	// Warm up every path once: lazily made parts are not leaks.
	for i := range 2 * len(paths) {
		if err := request(e.http, i); err != nil {
			t.Fatal(err)
		}
		if err := request(oneShot, i); err != nil {
			t.Fatal(err)
		}
	}
	// outage runs past the session's expiry: from then on every login
	// fails and the backoff is at its cap.
	outage := func() {
		faults[0].on()
		e.clk.Advance(65 * time.Minute)
		faults[0].off()
	}
	recoverKey := func() {
		t.Helper()
		e.clk.Advance(transientMax + time.Second)
		if r := e.read(t); r.status != http.StatusOK {
			t.Fatalf("no recovery after the failures: %d", r.status)
		}
	}
	outage()
	fail(2*len(faults), faults)
	recoverKey()
	before := quietFDs(t, e)

	const workers, perWorker = 8, 1250
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		c := e.http
		if w%2 == 1 {
			c = oneShot
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				if err := request(c, w*perWorker+i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	afterLocal := quietFDs(t, e)

	outage()
	fail(1000, faults)
	// A few of the slow kinds: each costs the attempt timeout.
	fail(10, []fault{
		{"half-open", func() { e.proxy.SetMode(faultproxy.HalfOpen) }, func() { e.proxy.SetMode(faultproxy.Pass) }},
		{"slow", func() { e.proxy.SetMode(faultproxy.Slow) }, func() { e.proxy.SetMode(faultproxy.Pass) }},
	})
	recoverKey()
	after := quietFDs(t, e)
	t.Logf("open fds: %d before, %d after %d local requests, %d after 1010 failed logins (%d proxy connections)",
		before, afterLocal, workers*perWorker, after, e.proxy.Connections())
	if afterLocal > before+fdSlack || after > before+fdSlack {
		t.Fatalf("descriptors leak: %d before, %d after the local requests, %d after the failed logins", before, afterLocal, after)
	}
}
