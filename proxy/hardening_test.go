package proxy_test

import (
	"strconv"
	"testing"

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
