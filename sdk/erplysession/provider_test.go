package erplysession_test

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/client"
	"github.com/erply-sessiond/erply-sessiond/sdk/erplysession"
)

// stubDaemon serves the two routes the provider uses on a real Unix
// socket: the session JSON and invalidate (compare-and-refresh: a report of
// the current key replaces it with the next one), and counts requests.
type stubDaemon struct {
	mu          sync.Mutex
	key         int   // the current key is "k<key>"
	expiresIn   int64 // seconds, as the daemon answers
	status      int   // when not 0, every answer is this error status
	body        string
	reads       int
	invalidates []string
}

func (d *stubDaemon) current() string { return "k" + string(rune('0'+d.key)) }

func (d *stubDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.status != 0 {
		w.Header().Set("Retry-After", "2")
		w.WriteHeader(d.status)
		_, _ = w.Write([]byte(`{"error":"no_valid_session","message":"x"}`))
		return
	}
	switch r.Method + " " + r.URL.Path {
	case "GET /v1/sessions/pos":
		d.reads++
	case "POST /v1/sessions/pos/invalidate":
		_ = r.ParseForm()
		stale := r.PostForm.Get("key")
		d.invalidates = append(d.invalidates, stale)
		if stale == d.current() {
			d.key++
		}
	default:
		http.NotFound(w, r)
		return
	}
	if d.body != "" {
		_, _ = w.Write([]byte(d.body))
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"name": "pos", "clientCode": "104729", "apiURL": "https://104729.erply.com/api/",
		"sessionKey": d.current(), "expiresIn": d.expiresIn})
}

func (d *stubDaemon) counts() (reads int, invalidates []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reads, append([]string(nil), d.invalidates...)
}

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func startStub(t *testing.T, d *stubDaemon) (*erplysession.Provider, *fakeClock) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: d}
	done := make(chan struct{})
	go func() { _ = srv.Serve(l); close(done) }()
	c := client.New(sock)
	t.Cleanup(func() { c.CloseIdleConnections(); srv.Close(); <-done })
	clk := &fakeClock{t: time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)}
	return erplysession.New(c, "pos", erplysession.Options{Now: clk.Now}), clk
}

// TestHoldsTheSessionUntilTheMargin: the SDK calls GetSession before every
// request; the provider answers from memory, without a round trip to the
// daemon, until DefaultMargin before the session's expiry.
func TestHoldsTheSessionUntilTheMargin(t *testing.T) {
	d := &stubDaemon{expiresIn: 600}
	p, clk := startStub(t, d)
	for range 5 {
		if k, err := p.GetSession(); err != nil || k != "k0" {
			t.Fatalf("GetSession = %q, %v", k, err)
		}
	}
	clk.Advance(600*time.Second - erplysession.DefaultMargin - time.Second)
	if _, err := p.GetSession(); err != nil {
		t.Fatal(err)
	}
	if reads, _ := d.counts(); reads != 1 {
		t.Fatalf("%d reads from the daemon for 6 calls within the session's life, want 1", reads)
	}
	clk.Advance(time.Second)
	if _, err := p.GetSession(); err != nil {
		t.Fatal(err)
	}
	if reads, _ := d.counts(); reads != 2 {
		t.Errorf("%d reads, want 2: the session was due for a new look at the margin", reads)
	}
}

// TestShortSessionAskedEachTime: a session with less than the margin left
// is handed out but not held.
func TestShortSessionAskedEachTime(t *testing.T) {
	d := &stubDaemon{expiresIn: 30}
	p, _ := startStub(t, d)
	for range 3 {
		if k, err := p.GetSession(); err != nil || k != "k0" {
			t.Fatalf("GetSession = %q, %v", k, err)
		}
	}
	if reads, _ := d.counts(); reads != 3 {
		t.Errorf("%d reads for 3 calls, want 3", reads)
	}
}

// TestInvalidateReportsTheKeyHandedOut: after Invalidate the next
// GetSession reports the key handed out last to the daemon's invalidate
// route (once, however many goroutines invalidated) and hands out the
// session the daemon answers, which it then holds.
func TestInvalidateReportsTheKeyHandedOut(t *testing.T) {
	d := &stubDaemon{expiresIn: 3600}
	p, _ := startStub(t, d)
	if k, _ := p.GetSession(); k != "k0" {
		t.Fatalf("first key %q", k)
	}
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(p.Invalidate)
	}
	wg.Wait()
	keys := make([]string, 16)
	for i := range keys {
		wg.Go(func() {
			var err error
			if keys[i], err = p.GetSession(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for _, k := range keys {
		if k != "k1" {
			t.Fatalf("keys after Invalidate: %v, want all k1", keys)
		}
	}
	reads, inv := d.counts()
	if len(inv) != 1 || inv[0] != "k0" || reads != 1 {
		t.Errorf("daemon saw invalidates %v and %d reads, want [k0] and 1", inv, reads)
	}
	// Invalidate before any key was handed out reports nothing.
	q, _ := startStub(t, &stubDaemon{expiresIn: 3600})
	q.Invalidate()
	if k, err := q.GetSession(); err != nil || k != "k0" {
		t.Errorf("GetSession after an early Invalidate = %q, %v", k, err)
	}
}

// TestAFailedReportIsRetried: when the daemon cannot answer the report, the
// error reaches the SDK and the report is made again at the next call.
func TestAFailedReportIsRetried(t *testing.T) {
	d := &stubDaemon{expiresIn: 3600}
	p, _ := startStub(t, d)
	if _, err := p.GetSession(); err != nil {
		t.Fatal(err)
	}
	p.Invalidate()
	d.mu.Lock()
	d.status = http.StatusServiceUnavailable
	d.mu.Unlock()
	_, err := p.GetSession()
	var de *client.Error
	if !errors.Is(err, client.ErrUnavailable) || !errors.As(err, &de) || de.RetryAfter != 2*time.Second {
		t.Fatalf("err = %v, want the daemon's 503 with its Retry-After", err)
	}
	d.mu.Lock()
	d.status = 0
	d.mu.Unlock()
	if k, err := p.GetSession(); err != nil || k != "k1" {
		t.Fatalf("GetSession = %q, %v; want k1 after the report went through", k, err)
	}
	if _, inv := d.counts(); len(inv) != 1 || inv[0] != "k0" {
		t.Errorf("invalidates %v, want [k0]", inv)
	}
}

// TestAnswerWithoutAKey: an answer that lacks the key or its lifetime (a
// daemon whose answer changed shape) is an error, never an empty key.
func TestAnswerWithoutAKey(t *testing.T) {
	for _, body := range []string{`{"name":"pos","expiresIn":600}`, `{"name":"pos","sessionKey":"k"}`, `{"session_key":"k","expires_in":600}`} {
		d := &stubDaemon{body: body}
		p, _ := startStub(t, d)
		if k, err := p.GetSession(); err == nil || k != "" {
			t.Errorf("answer %s: GetSession = %q, %v; want an error", body, k, err)
		}
	}
}

// TestBuilder: the SDK's builder gets the credential's client code, API
// URL and the provider itself.
func TestBuilder(t *testing.T) {
	p, _ := startStub(t, &stubDaemon{expiresIn: 3600})
	b, err := p.Builder(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if b.ClientCode != "104729" || b.URL != "https://104729.erply.com/api/" || b.SessionProvider != p {
		t.Errorf("builder = %+v", b)
	}
}
