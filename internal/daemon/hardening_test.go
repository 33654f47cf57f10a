package daemon_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/internal/daemon"
	"github.com/erply-sessiond/erply-sessiond/internal/faultproxy"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Issue 16 item 9: with sessions on TCP, a credential restricted by
// ALLOW_UIDS is served on the socket only, and the start-up log says
// which credentials TCP serves.
func TestTCPServesUnrestrictedCredentialsAndSaysWhich(t *testing.T) {
	d := startDaemon(t, daemonOptions{env: map[string]string{
		"SESSIOND_HTTP_ADDR": "127.0.0.1:0", "SESSIOND_HTTP_SESSIONS": "true",
		"SESSIOND_CASHIER_ALLOW_UIDS": "4242",
	}})
	line := d.logs.waitLine(t, 5*time.Second, "the TCP listener's credentials", func(l string) bool {
		return strings.Contains(l, "the TCP listener serves these credentials")
	})
	if !strings.Contains(line, `"credentials":["pos"]`) || !strings.Contains(line, `"socketOnly":["cashier"]`) {
		t.Fatalf("start-up line: %s", line)
	}
	addr := d.dm.HTTPAddr()
	if code, body := tcpDo(t, addr, "GET", "/v1/sessions/cashier/key", "X-Sessiond-Request", "1"); code != http.StatusForbidden {
		t.Fatalf("restricted credential on TCP: %d %q, want 403", code, body)
	}
	if code, body := tcpDo(t, addr, "GET", "/v1/sessions/pos/key", "X-Sessiond-Request", "1"); code != http.StatusOK {
		t.Fatalf("unrestricted credential on TCP: %d %q", code, body)
	}
}

// Issue 16 item 12: the upstream client's lines carried "component"
// twice (the daemon labelled its logger, and so did upstream.New).
func TestLogLinesCarryOneComponent(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	d.key("pos")
	d.logs.waitLine(t, 5*time.Second, "an upstream line", func(l string) bool {
		return strings.Contains(l, `"component":"upstream"`)
	})
	for _, l := range strings.Split(d.logs.String(), "\n") {
		if n := strings.Count(l, `"component":`); n > 1 {
			t.Fatalf("%d component keys in %s", n, l)
		}
	}
}

// Issue 16 item 12: a caller waiting on a login that hangs when SIGTERM
// comes got its connection closed at the shutdown timeout (10 s); the
// logins are cancelled after a grace, so it gets a 503 saying why.
func TestShutdownAnswersCallersWaitingForAHungLogin(t *testing.T) {
	var jc *jumpClock
	var fp *faultproxy.Proxy
	logins := make(chan struct{}, 1)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	d := startDaemon(t, daemonOptions{
		env: map[string]string{"SESSIOND_CREDENTIALS": "pos", "SESSIOND_CASHIER_KIND": "", "SESSIOND_CASHIER_PARENT": "", "SESSIOND_CASHIER_PIN": ""},
		// No per-attempt timeout: a hung login lasts the pool's whole
		// login timeout (60 s), past the shutdown timeout.
		upstream:  &upstream.Options{RetryMax: -1, HTTPClient: &http.Client{Transport: tr}},
		wrapClock: func(f *clock.Fake) clock.Clock { jc = &jumpClock{Fake: f}; return jc },
		tune:      func(o *daemon.Options) { o.ShutdownLoginGrace = 50 * time.Millisecond },
		setup: func(d *testDaemon) {
			var err error
			fp, err = faultproxy.New(d.fake.URL(), faultproxy.Options{OnRequest: func(r faultproxy.Request) {
				if form, _ := url.ParseQuery(string(r.Body)); form.Get("request") == "verifyUser" {
					select {
					case logins <- struct{}{}:
					default:
					}
				}
			}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { fp.Close() })
			d.env["SESSIOND_API_URL"] = fp.URL() + "/{clientCode}/api/"
		},
	})
	d.key("pos")
	<-logins // the first login's
	fp.SetMode(faultproxy.HalfOpen)
	jc.Jump(2 * time.Hour) // the session is gone; no timer fires

	type result struct {
		status int
		body   string
		err    error
	}
	answered := make(chan result, 1)
	go func() {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://sessiond/v1/sessions/pos/key", nil)
		res, err := d.http.Do(req)
		if err != nil {
			answered <- result{err: err}
			return
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		answered <- result{status: res.StatusCode, body: string(b), err: err}
	}()
	select {
	case <-logins: // the caller's request is waiting for this login, which hangs
	case <-time.After(10 * time.Second):
		t.Fatal("the caller's login never reached Erply")
	}
	stopping := time.Now()
	d.cancel()
	var r result
	select {
	case r = <-answered:
	case <-time.After(15 * time.Second):
		t.Fatal("no answer after SIGTERM")
	}
	if r.err != nil || r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "shutting down") {
		t.Fatalf("the waiting caller got %d %q (%v), want 503 saying the daemon is shutting down", r.status, r.body, r.err)
	}
	if took := time.Since(stopping); took >= daemon.ShutdownTimeout {
		t.Fatalf("answered %v after SIGTERM, want before the shutdown timeout", took)
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
}

// Issue 16 item 4: a sink file whose write fails is retried until it
// succeeds, and meanwhile /v1/sessions and a metric say so.
func TestSinkWriteFailureShownAndRetried(t *testing.T) {
	var dir, path string
	d := startDaemon(t, daemonOptions{setup: func(d *testDaemon) {
		dir = filepath.Join(d.dir, "keys") // missing until later
		path = filepath.Join(dir, "pos.key")
		d.env["SESSIOND_POS_SINK_FILE"] = path
	}})
	if !strings.Contains(d.logs.String(), "SESSIOND_POS_SINK_FILE: directory "+dir+" does not exist") {
		t.Fatalf("no warning about the missing directory at start:\n%s", d.logs)
	}
	sinkError := func() string {
		code, body := d.get("/v1/sessions")
		var list []struct {
			Name      string `json:"name"`
			SinkError string `json:"sinkError"`
		}
		if code != http.StatusOK || json.Unmarshal([]byte(body), &list) != nil {
			t.Fatalf("list: %d %s", code, body)
		}
		for _, it := range list {
			if it.Name == "pos" {
				return it.SinkError
			}
		}
		t.Fatalf("pos not listed: %s", body)
		return ""
	}
	if e := sinkError(); !strings.Contains(e, path) {
		t.Fatalf("sinkError = %q, want the write's error naming %s", e, path)
	}
	if !strings.Contains(scrape(t, d), `erply_sessiond_sink_write_failing{credential="pos"} 1`) {
		t.Fatal("sink_write_failing{pos} is not 1 while the write fails")
	}
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	d.clk.Advance(time.Minute) // the retries' waits: 1 s, 2 s, … within the minute
	if b, err := os.ReadFile(path); err != nil || string(b) != d.key("pos")+"\n" {
		t.Fatalf("sink file %q (%v) after the directory appeared, want the current key", b, err)
	}
	if e := sinkError(); e != "" {
		t.Fatalf("sinkError = %q after the write succeeded", e)
	}
	if !strings.Contains(scrape(t, d), `erply_sessiond_sink_write_failing{credential="pos"} 0`) {
		t.Fatal("sink_write_failing{pos} is not 0 after the write")
	}
}

// scrape returns the daemon's /metrics.
func scrape(t *testing.T, d *testDaemon) string {
	t.Helper()
	code, body := d.get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("metrics: %d", code)
	}
	return body
}
