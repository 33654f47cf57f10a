package proxy_test

import (
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/proxy"
	"github.com/erply-sessiond/erply-sessiond/refresher"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// start is 20 minutes into an hour, so that Erply's hourly quota window
// ends 40 minutes later.
var start = time.Date(2026, 11, 23, 8, 20, 0, 0, time.UTC)

// Accounts of the fake beyond the demo one.
const (
	otherCode     = "200300"
	otherUser     = "clerk@other.example"
	otherPassword = "other-clerk-pw"
)

// env is the proxy behind a ServeMux on a real HTTP server, a pool over the
// fake Erply, and the fake, all on one fake clock.
type env struct {
	t     testing.TB
	clk   *clock.Fake
	fake  *erplytest.Server
	code  string
	pool  *pool.Pool
	proxy *proxy.Proxy
	reg   *prometheus.Registry
	base  string // the harness server's URL
	hc    *http.Client
}

// envConfig varies an env.
type envConfig struct {
	tune func(*proxy.Options)
	// bad adds credential "bad" whose password is wrong.
	bad bool
	// other adds credential "other" on a second account (client code otherCode).
	other bool
	// onQueue is passed to proxy.SetOnQueue.
	onQueue func()
}

func newEnv(t testing.TB, cfg envConfig) *env {
	t.Helper()
	clk := clock.NewFake(start)
	fake := erplytest.New(clk)
	t.Cleanup(fake.Close)
	code, user, pw, _ := fake.SeedDemo()
	dir := t.TempDir()
	writeSecret := func(name, secret string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	cred := func(name, code, user, pwFile string) config.Credential {
		return config.Credential{
			Name: name, Kind: config.KindPassword, ClientCode: code, APIURL: fake.APIURL(),
			Username: user, Password: config.Secret{File: pwFile, Var: "SESSIOND_" + strings.ToUpper(name) + "_PASSWORD_FILE"},
			SessionLength: 3600,
		}
	}
	creds := []config.Credential{cred("pos", code, user, writeSecret("pos", pw))}
	if cfg.bad {
		creds = append(creds, cred("bad", code, user, writeSecret("bad", "not-the-password")))
	}
	if cfg.other {
		fake.AddAccount(otherCode).AddUser(erplytest.User{Username: otherUser, Password: otherPassword, UserID: 9})
		creds = append(creds, cred("other", otherCode, otherUser, writeSecret("other", otherPassword)))
	}

	logger := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	client := upstream.New(upstream.Options{
		Logger: logger, RetryMax: -1, Clock: clk,
		RetryWaitMin: time.Millisecond, RetryWaitMax: 2 * time.Millisecond, RateLimitWait: time.Millisecond,
	})
	policy := refresher.Default()
	rng := rand.New(rand.NewPCG(1, 2))
	var mu sync.Mutex
	policy.Float64 = func() float64 { mu.Lock(); defer mu.Unlock(); return rng.Float64() }
	reg := prometheus.NewRegistry()
	p, err := pool.New(pool.Options{MethodFor: login.Methods(client), Upstream: client, Credentials: creds, Clock: clk, Policy: policy, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); client.CloseIdleConnections() })
	if err := p.Open(context.Background()); err != nil {
		t.Fatal(err)
	}

	opts := proxy.Options{Sessions: p, Upstream: client, Clock: clk, Logger: logger, Registerer: reg}
	if cfg.tune != nil {
		cfg.tune(&opts)
	}
	px := proxy.New(opts)
	if cfg.onQueue != nil {
		proxy.SetOnQueue(px, cfg.onQueue)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /v1/sessions/{name}/api", px)
	srv := httptest.NewServer(mux)
	// The caller asks for no compression, so it sees the bytes as sent.
	hc := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	t.Cleanup(func() { hc.CloseIdleConnections(); srv.Close(); px.CloseIdleConnections() })
	return &env{t: t, clk: clk, fake: fake, code: code, pool: p, proxy: px, reg: reg, base: srv.URL, hc: hc}
}

// answer is what a caller of the proxy got.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) String() string {
	return strconv.Itoa(a.status) + " " + string(a.body)
}

// url is the proxy route of credential name.
func (e *env) url(name string) string { return e.base + "/v1/sessions/" + name + "/api" }

// call posts form (a urlencoded body) for name; safe in any goroutine.
func (e *env) call(name, form string) (answer, error) {
	req, err := http.NewRequest(http.MethodPost, e.url(name), strings.NewReader(form))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return e.do(req)
}

func (e *env) do(req *http.Request) (answer, error) {
	resp, err := e.hc.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// post is call for the test goroutine.
func (e *env) post(name, form string) answer {
	e.t.Helper()
	a, err := e.call(name, form)
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

// key returns the credential's current session key.
func (e *env) key(name string) string {
	e.t.Helper()
	s, err := e.pool.Get(context.Background(), name)
	if err != nil {
		e.t.Fatal(err)
	}
	return s.Session.SessionKey
}

// erplyStatus decodes the status of an Erply envelope.
type erplyStatus struct {
	ResponseStatus string `json:"responseStatus"`
	ErrorCode      int    `json:"errorCode"`
}

func envelope(t testing.TB, a answer) erplyStatus {
	t.Helper()
	var env struct {
		Status erplyStatus `json:"status"`
	}
	if err := json.Unmarshal(a.body, &env); err != nil {
		t.Fatalf("reply %s is not an Erply envelope: %v", a, err)
	}
	return env.Status
}

// proxyErr decodes the proxy's own error answer.
type proxyErr struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	ErplyCode *int   `json:"erplyCode"`
}

func errorOf(t testing.TB, a answer) proxyErr {
	t.Helper()
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error answer %s has Content-Type %q", a, ct)
	}
	var pe proxyErr
	if err := json.Unmarshal(a.body, &pe); err != nil || pe.Error == "" || pe.Message == "" {
		t.Fatalf("answer %s is not a proxy error (%v)", a, err)
	}
	return pe
}

// wantError checks a proxy error answer: status, code and Retry-After ("" = none).
func wantError(t testing.TB, a answer, status int, code, retryAfter string) proxyErr {
	t.Helper()
	if a.status != status {
		t.Fatalf("status %d, want %d: %s", a.status, status, a)
	}
	pe := errorOf(t, a)
	if pe.Error != code {
		t.Fatalf("error %q, want %q: %s", pe.Error, code, a)
	}
	if got := a.header.Get("Retry-After"); got != retryAfter {
		t.Fatalf("Retry-After %q, want %q: %s", got, retryAfter, a)
	}
	return pe
}

// metric returns the value of the series of name with exactly labels, 0 if absent.
func (e *env) metric(name string, labels map[string]string) float64 {
	e.t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if matches(m, labels) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue()
				case m.Gauge != nil:
					return m.Gauge.GetValue()
				}
			}
		}
	}
	return 0
}

func matches(m *dto.Metric, labels map[string]string) bool {
	if len(m.GetLabel()) != len(labels) {
		return false
	}
	for _, lp := range m.GetLabel() {
		if v, ok := labels[lp.GetName()]; !ok || v != lp.GetValue() {
			return false
		}
	}
	return true
}

func (e *env) requests(credential, request, outcome string) float64 {
	return e.metric("erply_sessiond_proxy_requests_total",
		map[string]string{"credential": credential, "request": request, "outcome": outcome})
}

// gate blocks fake-Erply handlers until opened; open is idempotent and also
// runs at cleanup, so a failing test does not hang the fake's Close.
type gate struct {
	entered chan struct{}
	ch      chan struct{}
	once    sync.Once
}

func newGate(t testing.TB) *gate {
	g := &gate{entered: make(chan struct{}, 100), ch: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

// wait is called by a handler: it announces itself and blocks until open.
func (g *gate) wait() {
	g.entered <- struct{}{}
	<-g.ch
}

// await receives from ch, failing the test if nothing comes within 10 s (a
// bound for a broken proxy, not a timing assumption).
func await[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("nothing came for 10 s: %s", what)
	}
	panic("unreachable")
}
