package proxy_test

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
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

// Issue 16 item 10: ten concurrent 100 MiB replies with "status" last
// drove the RSS to about 1.26 GB: each was held up to 32 MiB (and the
// decoder's copy) while the proxy looked for its status. It holds at most
// DefaultMaxReply and streams the rest unchanged, without a re-send.
func TestProxyStreamsLargeRepliesWithStatusLast(t *testing.T) {
	const size = 8 << 20
	var b strings.Builder
	b.WriteString(`{"records":[`)
	for b.Len() < size {
		b.WriteString(`{"productID":1,"name":"a record that is not small"},`)
	}
	b.WriteString(`{"productID":2}],"status":{"request":"getProducts","responseStatus":"error","errorCode":1054}}`)
	body := []byte(b.String())
	e := newEnv(t, envConfig{})
	e.key("pos")
	e.fake.SetHandler("getProducts", func(url.Values) (int, []byte) { return 200, body })
	logins := e.fake.Calls("verifyUser")

	req, err := http.NewRequest(http.MethodPost, e.url("pos"), strings.NewReader(getProducts))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	// The caller reads the reply as a stream, so that what is allocated
	// is the proxy's (and the fake's and the client's few buffers).
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	runtime.ReadMemStats(&after)
	if want := sha256.Sum256(body); err != nil || resp.StatusCode != 200 || n != int64(len(body)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("caller got %d and %d bytes (%v), want Erply's %d bytes unchanged", resp.StatusCode, n, err, len(body))
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("an %d MiB reply with status last: %.2f MiB allocated", size>>20, float64(alloc)/(1<<20))
	// The status (1054) lies past the bound: streamed as sent, no re-send.
	if n, m := e.fake.Calls("getProducts"), e.fake.Calls("verifyUser")-logins; n != 1 || m != 0 {
		t.Fatalf("%d calls and %d logins, want the one call and no login", n, m)
	}
	// Before: 227 MiB (the whole reply held, decoded token by token, and
	// sent again after the 1054 found in it); after: under 1 MiB.
	if alloc > 8*proxy.DefaultMaxReply {
		t.Fatalf("%d bytes allocated for one %d-byte reply, want at most 8× the %d bytes the proxy may hold", alloc, len(body), proxy.DefaultMaxReply)
	}
}
