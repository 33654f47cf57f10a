package proxy_test

import (
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/proxy"
)

// requestSeries counts the series of the proxy's request counter.
func (e *env) requestSeries() int {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "erply_sessiond_proxy_requests_total" {
			return len(mf.GetMetric())
		}
	}
	return 0
}

// Issue 16 item 7: every plain request name a local caller sent became a
// label value when the call was rejected before Erply saw it (50,000
// random names: 50,003 series, /metrics from 13 KB to 7.3 MB). Only names
// of calls Erply carried out label the counter, at most MaxRequestLabels.
func TestProxyCallersCannotGrowTheLabelSet(t *testing.T) {
	e := newEnv(t, envConfig{})
	for i := range 1000 {
		// Rejected before Erply: the caller supplied its own session key.
		e.post("pos", "request=madeUp"+strconv.Itoa(i)+"&sessionKey=x")
	}
	if n := e.requestSeries(); n != 1 {
		t.Fatalf("%d series after 1000 made-up names rejected before Erply, want 1 (other)", n)
	}
	// Names Erply answers: the fake carries out any call on a live
	// session, so these fill the set up to its bound and no further.
	for i := range proxy.MaxRequestLabels + 50 {
		if a := e.post("pos", "request=call"+strconv.Itoa(i)); a.status != 200 {
			t.Fatalf("call %d: %s", i, a)
		}
	}
	// The bound's names (ok), and other (rejected, and ok past the bound).
	if n, max := e.requestSeries(), proxy.MaxRequestLabels+2; n != max {
		t.Fatalf("%d series after %d names Erply carried out, want %d", n, proxy.MaxRequestLabels+50, max)
	}
	// A name Erply carried out keeps its label when a later call of it is rejected.
	e.post("pos", "request=call0&clientCode=x")
	if n := e.requests("pos", "call0", "rejected"); n != 1 {
		t.Fatalf("requests_total{pos,call0,rejected} = %v, want 1", n)
	}
}

// Issue 16 item 8: Erply answering 1054 to every call on fresh keys made a
// login per proxied call (101 logins for 100 calls). The key is confirmed
// alive with getSessionKeyInfo past the bound on forced logins, so the
// re-send uses it again and the caller gets Erply's second 1054 as sent.
func TestProxyPersistent1054DoesNotLogInPerCall(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.key("pos")
	body := `{"status":{"request":"getProducts","responseStatus":"error","errorCode":1054},"records":null}`
	e.fake.SetHandler("getProducts", func(url.Values) (int, []byte) { return 200, []byte(body) })
	logins := e.fake.Calls("verifyUser")
	for i := range 100 {
		a := e.post("pos", getProducts)
		if a.status != 200 || string(a.body) != body {
			t.Fatalf("call %d: %s, want Erply's 1054 as sent", i, a)
		}
		e.clk.Advance(100 * time.Millisecond)
	}
	n := e.fake.Calls("verifyUser") - logins
	t.Logf("100 proxied calls answered 1054 in 10 s: %d logins, %d getSessionKeyInfo", n, e.fake.Calls("getSessionKeyInfo"))
	if n > pool.ForcedBurst {
		t.Fatalf("%d logins for 100 calls Erply answered 1054 in 10 s, want at most %d", n, pool.ForcedBurst)
	}
}
