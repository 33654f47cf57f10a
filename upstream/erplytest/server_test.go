package erplytest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// outcome is what one raw call produced: a transport error, a non-200
// status, or an Erply code (0 for ok).
type outcome struct {
	dropped    bool
	httpStatus int
	retryAfter string
	erplyCode  int
}

func (e *env) outcome(clientCode, request string, kv ...string) outcome {
	e.t.Helper()
	resp, body, err := e.post(context.Background(), e.apiURL(clientCode), form(clientCode, request, kv...))
	if err != nil {
		return outcome{dropped: true}
	}
	if resp.StatusCode != http.StatusOK {
		return outcome{httpStatus: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	}
	var r reply
	if err := json.Unmarshal(body, &r); err != nil {
		e.t.Fatalf("%s: %v: %s", request, err, body)
	}
	if r.Status.RequestUnixTime != e.clk.Now().Unix() {
		e.t.Fatalf("%s: requestUnixTime %d, want %d", request, r.Status.RequestUnixTime, e.clk.Now().Unix())
	}
	return outcome{httpStatus: 200, erplyCode: r.Status.ErrorCode}
}

func TestFaults(t *testing.T) {
	ok := outcome{httpStatus: 200}
	tests := []struct {
		name   string
		faults []Fault
		// calls are made in order; want holds what each produced.
		calls []string // "request" or "clientCode:request"
		want  []outcome
	}{
		{
			name:   "HTTP 503 for the next two calls",
			faults: []Fault{{Request: "verifyUser", HTTPStatus: 503, Count: 2}},
			calls:  []string{"verifyUser", "getSessionKeyInfo", "verifyUser", "verifyUser"},
			want:   []outcome{{httpStatus: 503}, ok, {httpStatus: 503}, ok},
		},
		{
			name:   "HTTP 429 with Retry-After rounded up",
			faults: []Fault{{HTTPStatus: 429, RetryAfter: 1500 * time.Millisecond, Count: 1}},
			calls:  []string{"verifyUser", "verifyUser"},
			want:   []outcome{{httpStatus: 429, retryAfter: "2"}, ok},
		},
		{
			name:   "Erply code for one account only",
			faults: []Fault{{ClientCode: "104729", ErplyCode: 1002, Count: 1}},
			calls:  []string{"555:verifyUser", "verifyUser", "verifyUser"},
			want:   []outcome{ok, {httpStatus: 200, erplyCode: 1002}, ok},
		},
		{
			name:   "until cleared",
			faults: []Fault{{Request: "getJwtToken", ErplyCode: 1000}},
			calls:  []string{"verifyUser", "getJwtToken", "getJwtToken", "getJwtToken", "clear", "getJwtToken"},
			want:   []outcome{ok, {httpStatus: 200, erplyCode: 1000}, {httpStatus: 200, erplyCode: 1000}, {httpStatus: 200, erplyCode: 1000}, {}, ok},
		},
		{
			name:   "drop the connection once",
			faults: []Fault{{Drop: true, Count: 1}},
			calls:  []string{"verifyUser", "verifyUser"},
			want:   []outcome{{dropped: true}, ok},
		},
		{
			name:   "first match wins",
			faults: []Fault{{HTTPStatus: 503, Count: 1}, {ErplyCode: 1000, Count: 1}, {Request: "verifyUser", Drop: true, Count: 1}},
			calls:  []string{"verifyUser", "verifyUser", "verifyUser", "verifyUser"},
			want:   []outcome{{httpStatus: 503}, {httpStatus: 200, erplyCode: 1000}, {dropped: true}, ok},
		},
		{
			name:   "latency then an answer",
			faults: []Fault{{Latency: 20 * time.Millisecond, Count: 1}},
			calls:  []string{"verifyUser", "verifyUser"},
			want:   []outcome{ok, ok},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.s.AddAccount("555").AddUser(User{Username: e.user, Password: e.pw, UserID: 1})
			key := e.login()
			e.s.ResetCounters()
			for _, f := range tc.faults {
				e.s.Inject(f)
			}
			counted := 0
			for i, c := range tc.calls {
				if c == "clear" {
					e.s.ClearFaults()
					continue
				}
				cc, req := e.cc, c
				if a, b, ok := strings.Cut(c, ":"); ok {
					cc, req = a, b
				}
				began := time.Now()
				got := e.outcome(cc, req, "username", e.user, "password", e.pw, "sessionKey", key)
				counted++
				if got != tc.want[i] {
					t.Fatalf("call %d (%s): got %+v, want %+v", i, c, got, tc.want[i])
				}
				if i == 0 && tc.faults[0].Latency > 0 && time.Since(began) < tc.faults[0].Latency {
					t.Fatalf("answered after %v, before the injected latency", time.Since(began))
				}
			}
			if e.s.TotalCalls() != counted {
				t.Fatalf("TotalCalls = %d, want %d (faulted calls count too)", e.s.TotalCalls(), counted)
			}
		})
	}
}

func TestLatencyEndsWithRequestOrServer(t *testing.T) {
	for _, by := range []string{"client gives up", "server closes"} {
		t.Run(by, func(t *testing.T) {
			e := newEnv(t)
			events := make(chan string, 2)
			e.s.testHook = func(ev string) { events <- ev }
			e.s.Inject(Fault{Latency: time.Hour})

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				_, _, err := e.post(ctx, e.apiURL(e.cc), form(e.cc, "verifyUser", "username", e.user, "password", e.pw))
				errc <- err
			}()
			if ev := recv(t, events); ev != "latency-wait" {
				t.Fatalf("event %q, want latency-wait", ev)
			}
			if by == "client gives up" {
				cancel()
			} else {
				go e.s.Close() // must not wait out the hour
			}
			if ev := recv(t, events); ev != "latency-abort" {
				t.Fatalf("event %q, want latency-abort", ev)
			}
			err := recv(t, errc)
			if err == nil {
				t.Fatal("the request got an answer after its latency wait was cut short")
			}
			if by == "client gives up" && !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
		})
	}
}

// recv receives from c, failing the test if nothing comes within 10 s
// (the faults under test would otherwise hold it for an hour).
func recv[T any](t *testing.T, c <-chan T) T {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case v := <-c:
		return v
	case <-timer.C:
		t.Fatal("nothing received within 10 s")
		panic("unreachable")
	}
}

func TestSetHandler(t *testing.T) {
	e := newEnv(t)
	big := []byte(`{"status":{"responseStatus":"ok"},"records":[` + strings.Repeat(`{"x":1},`, 1000))
	var got url.Values
	e.s.SetHandler("verifyUser", func(f url.Values) (int, []byte) {
		got = f
		return 200, big
	})
	resp, body, err := e.post(context.Background(), e.apiURL(e.cc), form(e.cc, "verifyUser", "username", e.user, "password", e.pw))
	if err != nil || resp.StatusCode != 200 || string(body) != string(big) {
		t.Fatalf("override: HTTP %v, %d bytes, %v", resp, len(body), err)
	}
	if got.Get("password") != e.pw || e.s.Calls("verifyUser") != 1 {
		t.Fatalf("override saw form %v, Calls %d", got, e.s.Calls("verifyUser"))
	}
	e.s.SetHandler("verifyUser", nil)
	e.login()
}

func TestCountersAndRouting(t *testing.T) {
	e := newEnv(t)
	e.s.AddAccount("555").AddUser(User{Username: "o", Password: "other-pw"})
	key := e.login()
	e.login()
	e.callIn("555", "verifyUser", "username", "o", "password", "other-pw")
	e.call("getSessionKeyInfo", "sessionKey", key)

	if got := e.s.Calls("verifyUser"); got != 3 {
		t.Errorf("Calls(verifyUser) = %d, want 3", got)
	}
	if got := e.s.CallsFor(e.cc, "verifyUser"); got != 2 {
		t.Errorf("CallsFor(demo, verifyUser) = %d, want 2", got)
	}
	if got := e.s.CallsFor("555", "verifyUser"); got != 1 {
		t.Errorf("CallsFor(555, verifyUser) = %d, want 1", got)
	}
	if got := e.s.TotalCalls(); got != 4 {
		t.Errorf("TotalCalls = %d, want 4", got)
	}
	f := e.s.LastForm("verifyUser")
	if f.Get("clientCode") != "555" || f.Get("password") != "other-pw" || f.Get("sendContentType") != "1" {
		t.Errorf("LastForm = %v, want the last verifyUser's form", f)
	}
	f.Set("password", "mutated")
	if e.s.LastForm("verifyUser").Get("password") != "other-pw" {
		t.Error("LastForm returned the recorded form itself, not a copy")
	}
	if e.s.QueryStringsSeen() != 0 {
		t.Errorf("QueryStringsSeen = %d before any query string", e.s.QueryStringsSeen())
	}

	// Rejected before counting: wrong path, client code mismatch, wrong method.
	for _, tc := range []struct {
		name   string
		method string
		url    string
		form   url.Values
		want   int
	}{
		{"unknown path", http.MethodPost, e.s.URL() + "/api/", form(e.cc, "verifyUser"), 404},
		{"path and form client codes differ", http.MethodPost, e.apiURL("555"), form(e.cc, "verifyUser"), 404},
		{"GET", http.MethodGet, e.apiURL(e.cc), nil, 405},
	} {
		req, _ := http.NewRequest(tc.method, tc.url, strings.NewReader(tc.form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := e.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: HTTP %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
	if got := e.s.TotalCalls(); got != 4 {
		t.Errorf("TotalCalls = %d after rejected requests, want 4", got)
	}

	// Parameters in the query string are read as Erply reads them, and
	// counted: the request and whose names arrived there.
	_, body, err := e.post(context.Background(), e.apiURL(e.cc)+"?request=verifyUser&password=leak",
		url.Values{"clientCode": {e.cc}})
	if err != nil {
		t.Fatal(err)
	}
	var r reply
	if err := json.Unmarshal(body, &r); err != nil || r.Status.Request != "verifyUser" || r.Status.ErrorCode != 1050 {
		t.Errorf("verifyUser named in the query string without a user name: %s (%v), want error 1050", body, err)
	}
	if e.s.QueryStringsSeen() != 1 || !reflect.DeepEqual(e.s.QueryFieldsSeen(), []string{"password", "request"}) {
		t.Errorf("QueryStringsSeen = %d, QueryFieldsSeen = %v; want 1, [password request]", e.s.QueryStringsSeen(), e.s.QueryFieldsSeen())
	}

	e.s.ResetCounters()
	if e.s.Calls("verifyUser") != 0 || e.s.CallsFor(e.cc, "verifyUser") != 0 || e.s.TotalCalls() != 0 ||
		e.s.LastForm("verifyUser") != nil || e.s.QueryStringsSeen() != 0 || len(e.s.QueryFieldsSeen()) != 0 || e.s.MaxInFlight() != 0 {
		t.Error("ResetCounters left counts behind")
	}
}

func TestMaxInFlight(t *testing.T) {
	e := newEnv(t)
	const n = 6
	arrived := make(chan struct{})
	release := make(chan struct{})
	e.s.SetHandler("slowCall", func(url.Values) (int, []byte) {
		arrived <- struct{}{}
		<-release
		return 200, []byte(`{"status":{"responseStatus":"ok"},"records":[]}`)
	})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if _, _, err := e.post(context.Background(), e.apiURL(e.cc), form(e.cc, "slowCall")); err != nil {
				t.Error(err)
			}
		})
	}
	for range n {
		<-arrived
	}
	if got := e.s.MaxInFlight(); got != n {
		t.Errorf("MaxInFlight = %d with %d requests held, want %d", got, n, n)
	}
	close(release)
	wg.Wait()
	if got := e.s.MaxInFlight(); got != n {
		t.Errorf("MaxInFlight = %d after they finished, want the peak %d", got, n)
	}
	e.s.ResetCounters()
	e.login()
	if got := e.s.MaxInFlight(); got != 1 {
		t.Errorf("MaxInFlight = %d after reset and one call, want 1", got)
	}
}
