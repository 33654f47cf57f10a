// Command onecall measures a one-call job two ways against a fake Erply served over TLS behind an added network delay: a new process that logs in and makes the call, and a new process that makes the call through the daemon's proxy; it also counts TLS handshakes at the fake and measures the proxy's own overhead without the delay.
//
// Usage (from the repository, which it builds the daemon from unless
// -daemon names a binary):
//
//	go run ./bench/onecall [-n 30] [-delay 10ms] [-overhead-n 2000] [-daemon PATH]
//
// The fake Erply is upstream/erplytest's handler on a TLS listener with a
// certificate made at start for 127.0.0.1; the daemon and the job processes
// trust it through SSL_CERT_FILE. In front of it a relay delays every chunk
// of data by -delay in each direction and holds a new connection for one
// round trip before relaying, as a TCP handshake over that network would.
//
//   - (a) "login + call": what a job does today: a new process that connects
//     (TCP + TLS handshake), calls verifyUser, then getProducts.
//   - (b) "via daemon": a new process that sends getProducts to the
//     daemon's proxy over the Unix socket; the daemon holds a warm TLS
//     connection to Erply.
//
// Jobs alternate (a), (b), each timed from process start to exit; it prints
// the medians, their ratio, and the TLS handshakes the fake saw during each
// kind. Then, with the delay set to 0, it times -overhead-n sequential
// getProducts calls made directly (keep-alive) and through the proxy
// (keep-alive), and prints the medians and their difference: the proxy's
// own overhead.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/erply-sessiond/erply-sessiond/client"
	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/internal/sessiondtest"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	if len(os.Args) > 2 && os.Args[1] == "-job" {
		err = runJob(ctx, os.Args[2], os.Getenv)
	} else {
		err = run(ctx, os.Args[1:], os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "onecall:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("onecall", flag.ContinueOnError)
	n := fs.Int("n", 30, "jobs of each kind")
	delay := fs.Duration("delay", 10*time.Millisecond, "added network delay, each way")
	overheadN := fs.Int("overhead-n", 2000, "sequential calls of each kind for the proxy overhead (delay 0)")
	daemonBin := fs.String("daemon", "", "erply-sessiond binary (default: build it from this checkout)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *overheadN < 1 || *delay < 0 {
		return errors.New("-n and -overhead-n must be positive, -delay not negative")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "onecall")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if *daemonBin == "" {
		fmt.Fprintln(stdout, "== building the daemon")
		if *daemonBin, err = sessiondtest.Build(ctx, dir); err != nil {
			return err
		}
	}

	fake := erplytest.New(clock.Real{})
	defer fake.Close()
	code, user, password, _ := fake.SeedDemo()
	caFile := filepath.Join(dir, "ca.pem")
	erply, err := startTLSErply(fake.Handler(), caFile)
	if err != nil {
		return err
	}
	defer erply.Close()
	relay, err := newRelay(erply.Addr(), *delay)
	if err != nil {
		return err
	}
	defer relay.Close()
	apiURL := "https://" + relay.Addr() + "/" + code + "/api/"

	d, err := sessiondtest.Start(ctx, sessiondtest.Options{Binary: *daemonBin, Socket: filepath.Join(dir, "d.sock"), Env: []string{
		"SSL_CERT_FILE=" + caFile, "SESSIOND_LOG_LEVEL=warn", "SESSIOND_API_URL=https://" + relay.Addr() + "/{clientCode}/api/",
		"SESSIOND_CREDENTIALS=pos", "SESSIOND_POS_CLIENT_CODE=" + code, "SESSIOND_POS_USERNAME=" + user, "SESSIOND_POS_PASSWORD=" + password,
	}})
	if err != nil {
		return err
	}
	defer func() {
		if serr := d.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	defer d.Client.CloseIdleConnections()

	jobEnv := append(os.Environ(), "SSL_CERT_FILE="+caFile, "ONECALL_API="+apiURL, "ONECALL_CODE="+code,
		"ONECALL_USER="+user, "ONECALL_PASSWORD="+password, "ONECALL_SOCKET="+d.Socket)
	// One job of each kind first, unrecorded: page cache, the daemon's
	// first proxied call.
	for _, kind := range []string{"direct", "proxy"} {
		if _, err := timeJob(ctx, self, kind, jobEnv); err != nil {
			return err
		}
	}

	fmt.Fprintf(stdout, "== one-call job, %d of each kind, %v added each way (TLS fake Erply, new process per job)\n", *n, *delay)
	var direct, proxied []time.Duration
	var hsDirect, hsProxy int64
	for range *n {
		h := erply.Handshakes()
		t, err := timeJob(ctx, self, "direct", jobEnv)
		if err != nil {
			return err
		}
		direct = append(direct, t)
		hsDirect += erply.Handshakes() - h
		h = erply.Handshakes()
		if t, err = timeJob(ctx, self, "proxy", jobEnv); err != nil {
			return err
		}
		proxied = append(proxied, t)
		hsProxy += erply.Handshakes() - h
	}
	md, mp := median(direct), median(proxied)
	fmt.Fprintf(stdout, "(a) login + call, new process:      median %s  (min %s, max %s)\n", ms(md), ms(slices.Min(direct)), ms(slices.Max(direct)))
	fmt.Fprintf(stdout, "(b) via the daemon's proxy:          median %s  (min %s, max %s)\n", ms(mp), ms(slices.Min(proxied)), ms(slices.Max(proxied)))
	fmt.Fprintf(stdout, "ratio (a)/(b): %.1fx  (target >= 3x: %s)\n", float64(md)/float64(mp), met(float64(md) >= 3*float64(mp)))
	fmt.Fprintf(stdout, "TLS handshakes at the fake: %d during the %d login+call jobs, %d during the %d proxied jobs (the daemon reuses its connection)\n",
		hsDirect, *n, hsProxy, *n)

	relay.SetDelay(0)
	fmt.Fprintf(stdout, "== proxy overhead: %d sequential getProducts each way, no added delay, connections kept alive\n", *overheadN)
	key, err := d.Client.Key(ctx, "pos")
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(erply.cert)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer hc.CloseIdleConnections()
	form := url.Values{"request": {"getProducts"}, "clientCode": {code}, "sessionKey": {key}, "sendContentType": {"1"}}
	call := func() error { return postOK(ctx, hc, apiURL, form) }
	viaProxy := func() error {
		b, err := d.Client.Call(ctx, "pos", url.Values{"request": {"getProducts"}})
		if err != nil {
			return err
		}
		return checkOK(b)
	}
	h := erply.Handshakes()
	var dd, dp []time.Duration
	for i := range 2 * *overheadN {
		f, dst := call, &dd
		if i%2 == 1 {
			f, dst = viaProxy, &dp
		}
		start := time.Now()
		if err := f(); err != nil {
			return err
		}
		*dst = append(*dst, time.Since(start))
	}
	od, op := median(dd), median(dp)
	fmt.Fprintf(stdout, "direct to Erply (keep-alive):        median %s\n", us(od))
	fmt.Fprintf(stdout, "through the daemon (Unix socket):    median %s\n", us(op))
	fmt.Fprintf(stdout, "proxy overhead at the median: %s  (target < 1 ms: %s); TLS handshakes meanwhile: %d (the direct client's one connection)\n",
		us(op-od), met(op-od < time.Millisecond), erply.Handshakes()-h)
	return nil
}

// runJob is one job process: "direct" logs in and calls, "proxy" calls
// through the daemon. It reads its settings from getenv.
func runJob(ctx context.Context, kind string, getenv func(string) string) error {
	switch kind {
	case "direct":
		hc := &http.Client{}
		defer hc.CloseIdleConnections()
		api := getenv("ONECALL_API")
		var login struct {
			Status struct {
				ErrorCode int `json:"errorCode"`
			} `json:"status"`
			Records []struct {
				SessionKey string `json:"sessionKey"`
			} `json:"records"`
		}
		if err := post(ctx, hc, api, url.Values{"request": {"verifyUser"}, "clientCode": {getenv("ONECALL_CODE")},
			"username": {getenv("ONECALL_USER")}, "password": {getenv("ONECALL_PASSWORD")}, "sendContentType": {"1"}}, &login); err != nil {
			return err
		}
		if login.Status.ErrorCode != 0 || len(login.Records) != 1 {
			return fmt.Errorf("verifyUser: error %d", login.Status.ErrorCode)
		}
		return postOK(ctx, hc, api, url.Values{"request": {"getProducts"}, "clientCode": {getenv("ONECALL_CODE")},
			"sessionKey": {login.Records[0].SessionKey}, "sendContentType": {"1"}})
	case "proxy":
		c := client.New(getenv("ONECALL_SOCKET"))
		defer c.CloseIdleConnections()
		b, err := c.Call(ctx, "pos", url.Values{"request": {"getProducts"}})
		if err != nil {
			return err
		}
		return checkOK(b)
	}
	return fmt.Errorf("unknown job %q", kind)
}

func post(ctx context.Context, hc *http.Client, api string, form url.Values, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, api, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d", form.Get("request"), resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func postOK(ctx context.Context, hc *http.Client, api string, form url.Values) error {
	var r json.RawMessage
	if err := post(ctx, hc, api, form, &r); err != nil {
		return err
	}
	return checkOK(r)
}

// checkOK fails unless b is an Erply reply with responseStatus "ok".
func checkOK(b []byte) error {
	var r struct {
		Status struct {
			ResponseStatus string `json:"responseStatus"`
			ErrorCode      int    `json:"errorCode"`
		} `json:"status"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("not an Erply reply: %w", err)
	}
	if r.Status.ResponseStatus != "ok" {
		return fmt.Errorf("Erply error %d", r.Status.ErrorCode)
	}
	return nil
}

// timeJob runs this program as a job process and times it from start to exit.
func timeJob(ctx context.Context, self, kind string, env []string) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, self, "-job", kind)
	cmd.Env = env
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%s job: %w", kind, err)
	}
	return time.Since(start), nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond)) }

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

// tlsErply serves a handler over TLS with a certificate for 127.0.0.1
// made at start, and counts the TLS handshakes clients begin.
type tlsErply struct {
	srv        *http.Server
	l          net.Listener
	cert       *x509.Certificate
	handshakes atomic.Int64
	done       chan struct{}
}

// startTLSErply serves h on 127.0.0.1 over TLS and writes the certificate,
// PEM-encoded, to caFile for SSL_CERT_FILE.
func startTLSErply(h http.Handler, caFile string) (*tlsErply, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "onecall fake Erply"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	e := &tlsErply{cert: cert, done: make(chan struct{})}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			e.handshakes.Add(1)
			return nil, nil
		},
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.l = tls.NewListener(l, cfg)
	e.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	go func() {
		defer close(e.done)
		_ = e.srv.Serve(e.l)
	}()
	return e, nil
}

// Addr is the TLS listener's host:port.
func (e *tlsErply) Addr() string { return e.l.Addr().String() }

// Handshakes is how many TLS handshakes clients have begun.
func (e *tlsErply) Handshakes() int64 { return e.handshakes.Load() }

// Close stops the server and waits for it.
func (e *tlsErply) Close() {
	_ = e.srv.Close()
	<-e.done
}

// relay forwards TCP connections to a target, delaying every chunk of
// data by its delay in each direction, and holding each new connection
// for one round trip (two delays) before relaying, as a TCP handshake over
// such a network would cost.
type relay struct {
	target string
	l      net.Listener
	delay  atomic.Int64 // nanoseconds
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newRelay(target string, delay time.Duration) (*relay, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &relay{target: target, l: l, conns: make(map[net.Conn]struct{})}
	r.delay.Store(int64(delay))
	r.wg.Go(r.accept)
	return r, nil
}

// Addr is the relay's host:port.
func (r *relay) Addr() string { return r.l.Addr().String() }

// SetDelay changes the delay for data read from now on.
func (r *relay) SetDelay(d time.Duration) { r.delay.Store(int64(d)) }

// Close stops accepting, closes every connection and waits for its goroutines.
func (r *relay) Close() {
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.l.Close()
	r.wg.Wait()
}

func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *relay) accept() {
	for {
		c, err := r.l.Accept()
		if err != nil {
			return
		}
		if !r.track(c) {
			return
		}
		r.wg.Go(func() { r.serve(c) })
	}
}

func (r *relay) serve(c net.Conn) {
	defer c.Close()
	if d := time.Duration(r.delay.Load()); d > 0 {
		time.Sleep(2 * d) // the handshake's round trip; Close ends it by closing c afterwards
	}
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	if !r.track(up) {
		return
	}
	defer up.Close()
	var wg sync.WaitGroup
	wg.Go(func() { r.pipe(up, c) })
	r.pipe(c, up)
	wg.Wait()
}

// pipe copies src to dst, each chunk delivered the delay after it was read,
// in order; it closes dst's write side at EOF.
func (r *relay) pipe(dst, src net.Conn) {
	type chunk struct {
		b   []byte
		due time.Time
	}
	q := make(chan chunk, 256)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{buf[:n], time.Now().Add(time.Duration(r.delay.Load()))}
			}
			if err != nil {
				return
			}
		}
	}()
	for ch := range q {
		if wait := time.Until(ch.due); wait > 0 {
			time.Sleep(wait)
		}
		if _, err := dst.Write(ch.b); err != nil {
			src.Close()
			for range q { // let the reader finish
			}
			return
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
