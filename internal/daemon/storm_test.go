package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// stormModel is the configuration a reload storm moves through: pos and
// cashier (pin on pos) are never removed, cashier's and the churned
// credentials' SESSION_LENGTH change, and clerk and temp come and go.
type stormModel struct {
	code       string
	cashierLen int
	churnLen   int
	on         map[string]bool // churned credentials present
}

var stormChurn = []string{"clerk", "temp"}

func (m *stormModel) names() []string {
	names := []string{"pos", "cashier"}
	for _, n := range stormChurn {
		if m.on[n] {
			names = append(names, n)
		}
	}
	return names
}

func (m *stormModel) env() map[string]string {
	env := map[string]string{
		"SESSIOND_CREDENTIALS":            strings.Join(m.names(), ","),
		"SESSIOND_CASHIER_SESSION_LENGTH": strconv.Itoa(m.cashierLen),
	}
	for _, n := range stormChurn {
		if !m.on[n] {
			continue
		}
		p := "SESSIOND_" + strings.ToUpper(n) + "_"
		env[p+"CLIENT_CODE"] = m.code
		env[p+"USERNAME"] = n + "@demo.example"
		env[p+"PASSWORD"] = n + "-password-SECRET"
		env[p+"SESSION_LENGTH"] = strconv.Itoa(m.churnLen)
	}
	return env
}

// step is reload i's change: add a churned credential, change settings,
// or remove one, in turn; every fourth reload also changes and adds at
// once (the reload that crashed the daemon in issue 10).
func (m *stormModel) step(i int) string {
	toggleLen := func() {
		m.cashierLen = 5400 - m.cashierLen // 3600 <-> 1800
		m.churnLen = 3000 - m.churnLen     // 1200 <-> 1800
	}
	pick := func(on bool) string {
		for k := range stormChurn {
			if n := stormChurn[(i+k)%len(stormChurn)]; m.on[n] == on {
				return n
			}
		}
		return ""
	}
	var did []string
	if i%4 == 3 {
		toggleLen()
		did = append(did, "change")
	}
	switch i % 3 {
	case 0:
		if n := pick(false); n != "" {
			m.on[n] = true
			did = append(did, "add "+n)
		}
	case 1:
		toggleLen()
		did = append(did, "change")
	case 2:
		if n := pick(true); n != "" {
			m.on[n] = false
			did = append(did, "remove "+n)
		}
	}
	return strings.Join(did, ", ")
}

// stormRoutes are every route a reader visits, for a credential name.
var stormRoutes = []struct {
	name string
	req  func(cred string) (method, path, form string)
	// perCredential answers depend on the credential (404 once removed).
	perCredential bool
}{
	{"key", func(c string) (string, string, string) { return "GET", "/v1/sessions/" + c + "/key", "" }, true},
	{"json", func(c string) (string, string, string) { return "GET", "/v1/sessions/" + c, "" }, true},
	{"jwt", func(c string) (string, string, string) { return "GET", "/v1/sessions/" + c + "/jwt", "" }, true},
	{"invalidate", func(c string) (string, string, string) {
		return "POST", "/v1/sessions/" + c + "/invalidate", "key=0000000000000000000000000000000000000000"
	}, true},
	{"list", func(string) (string, string, string) { return "GET", "/v1/sessions", "" }, false},
	{"readyz", func(string) (string, string, string) { return "GET", "/readyz", "" }, false},
	{"metrics", func(string) (string, string, string) { return "GET", "/metrics", "" }, false},
}

// TestReloadStorm: 100 reloads that add, remove and change credentials
// while 20 readers loop over every route. The daemon stays up; the
// credentials never removed (pos, and cashier whose setting changes) never
// answer anything but 200, and are never missing from the list or
// readiness; a churned credential answers 200, 404 or 503 and nothing else;
// no request fails at the transport (a handler's panic would). At the end
// the served credentials are exactly the last configuration's, each with a
// live key, and no goroutine is left behind.
func TestReloadStorm(t *testing.T) {
	const reloads, readers = 100, 20
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // runs last: after the daemon stops
	var envFile string
	m := &stormModel{cashierLen: 3600, churnLen: 1200, on: map[string]bool{}}
	d := startDaemon(t, daemonOptions{
		env: map[string]string{"SESSIOND_LOG_LEVEL": "info"},
		setup: func(d *testDaemon) {
			m.code = d.code
			acct := d.fake.AddAccount(d.code)
			for i, n := range stormChurn {
				acct.AddUser(erplytest.User{Username: n + "@demo.example", Password: n + "-password-SECRET", UserID: 20 + i})
			}
			envFile = filepath.Join(d.dir, "env")
			writeEnvFile(t, envFile, m.env())
			d.env["SESSIOND_ENV_FILE"] = envFile
		},
	})

	tr := &http.Transport{MaxIdleConnsPerHost: readers, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "unix", d.socket)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 20 * time.Second}

	var (
		mu       sync.Mutex
		failures []string
		counts   = map[string]int{}
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	stable := map[string]bool{"pos": true, "cashier": true}
	creds := []string{"pos", "cashier", "clerk", "temp"}
	read := func(r, i int) {
		route := stormRoutes[(r+i)%len(stormRoutes)]
		cred := creds[(r*7+i)%len(creds)]
		method, path, form := route.req(cred)
		req, _ := http.NewRequest(method, "http://sessiond"+path, strings.NewReader(form))
		if form != "" {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, err := hc.Do(req)
		if err != nil {
			fail("%s %s: %v", method, path, err)
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			fail("%s %s: reading the answer: %v", method, path, err)
			return
		}
		mu.Lock()
		counts[route.name]++
		mu.Unlock()
		code := resp.StatusCode
		switch {
		case route.perCredential && stable[cred]:
			if code != http.StatusOK {
				fail("%s %s = %d %s: a credential never removed", method, path, code, body)
			}
		case route.perCredential:
			if code != http.StatusOK && code != http.StatusNotFound && code != http.StatusServiceUnavailable {
				fail("%s %s = %d %s", method, path, code, body)
			}
		case route.name == "list":
			var list []struct{ Name, State string }
			if err := json.Unmarshal(body, &list); code != http.StatusOK || err != nil {
				fail("GET /v1/sessions = %d %s", code, body)
				return
			}
			var names []string
			for _, s := range list {
				names = append(names, s.Name)
			}
			if len(names) < 2 || names[0] != "pos" || names[1] != "cashier" {
				fail("GET /v1/sessions lists %v: the credentials never removed are not first", names)
			}
		case route.name == "readyz":
			var rz readyz
			if err := json.Unmarshal(body, &rz); err != nil || (code != http.StatusOK && code != http.StatusServiceUnavailable) {
				fail("GET /readyz = %d %s", code, body)
				return
			}
			for n := range stable {
				if st := rz.Credentials[n].State; st != "ok" && st != "refreshing" {
					fail("GET /readyz: %s is %q: %s", n, st, body)
				}
			}
		case code != http.StatusOK:
			fail("%s %s = %d", method, path, code)
		}
	}

	// Each reader signals after every request; the reloads are paced by
	// those signals, so requests interleave with every reload.
	progress := make(chan struct{}, readers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce sync.Once
	stopReaders := func() { stopOnce.Do(func() { close(stop); wg.Wait() }) }
	t.Cleanup(stopReaders)
	var requests atomic.Int64
	for r := range readers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				read(r, i)
				requests.Add(1)
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		})
	}

	began := time.Now()
	for i := range reloads {
		for range readers / 4 {
			<-progress
		}
		did := m.step(i)
		writeEnvFile(t, envFile, m.env())
		if rz := d.reloadNoPanic(t); !rz.LastReload.OK {
			t.Fatalf("reload %d (%s): %+v", i, did, rz.LastReload)
		}
	}
	for range readers {
		<-progress
	}
	stopReaders()
	elapsed := time.Since(began)

	mu.Lock()
	for _, f := range failures {
		t.Error(f)
	}
	for _, r := range stormRoutes {
		if counts[r.name] == 0 {
			t.Errorf("no reader reached route %s", r.name)
		}
	}
	mu.Unlock()
	d.alive(t)

	// The last configuration, whole: its credentials log in (those added
	// last may still be in flight) and serve live keys; the others are gone.
	want := m.names()
	d.waitFor(t, 10*time.Second, "every configured credential ok", func() bool {
		_, rz, _ := d.readyz(t)
		return rz.Ready && len(rz.Credentials) == len(want)
	})
	var list []struct{ Name string }
	_, body := d.get("/v1/sessions")
	jsonBody(t, body, &list)
	var listed []string
	for _, s := range list {
		listed = append(listed, s.Name)
	}
	if !slices.Equal(listed, want) {
		t.Fatalf("after the storm /v1/sessions lists %v, the configuration has %v", listed, want)
	}
	for _, n := range creds {
		code, body := d.get("/v1/sessions/" + n + "/key")
		switch {
		case slices.Contains(want, n) && (code != http.StatusOK || !d.fake.SessionValid(strings.TrimSpace(body))):
			t.Errorf("%s after the storm = %d, want a live key", n, code)
		case !slices.Contains(want, n) && code != http.StatusNotFound:
			t.Errorf("%s, removed, answers %d, want 404", n, code)
		}
	}
	t.Logf("%d reloads and %d requests in %v (%v); logins: %d verifyUser, %d switchUser",
		reloads, requests.Load(), elapsed.Round(time.Millisecond), counts,
		d.fake.Calls("verifyUser"), d.fake.Calls("switchUser"))
}
