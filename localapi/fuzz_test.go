package localapi_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/localapi"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// maxFuzzBody bounds every answer of the API: the largest is /metrics, a
// few kilobytes; nothing a request says may make an answer grow past this.
const maxFuzzBody = 64 << 10

// panicLog records log lines that report a recovered handler panic.
type panicLog struct {
	mu    sync.Mutex
	lines []string
}

func (w *panicLog) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("panic")) {
		w.mu.Lock()
		w.lines = append(w.lines, string(p))
		w.mu.Unlock()
	}
	return len(p), nil
}

func (w *panicLog) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.lines
	w.lines = nil
	return l
}

// fuzzSecrets maps every secret the fake sessions hold to the credential it belongs to.
type fuzzSecrets map[string]string

// fuzzServer is the API over a real Unix socket and a loopback TCP listener
// (with session routes enabled behind the header), backed by three
// credentials: pos (healthy, with endpoint lists), cashier (its session
// expired and no login possible: 503) and secret (readable only by a uid the
// caller does not have: 403).
func fuzzServer(tb testing.TB) (*harness, fuzzSecrets, *panicLog) {
	expires := t0.Add(time.Hour)
	pos := snapshot("pos", "POSKEY0123456789abcdef0123456789abcdef01", expires, 3)
	pos.Session.Endpoints = map[string][]upstream.Endpoint{
		"customerRegistryURLs": {
			{URL: "https://cr-a.example/", Token: "t1", Priority: 10, Weight: 60, Raw: []byte(`{"url":"https://cr-a.example/","token":"t1","priority":10,"weight":60}`)},
			{URL: "https://cr-b.example/", Token: "t2", Priority: 20, Weight: 0},
		},
		"cayanGatewayURLs": {
			{Target: "cayan1.example", Port: 443, Priority: 0, Weight: 10, Raw: []byte(`{"target":"cayan1.example","port":443,"priority":0,"weight":10}`)},
		},
		"couponRegistryURLs": {},
	}
	cashier := snapshot("cashier", "CASHIERKEY56789abcdef0123456789abcdef012", t0.Add(30*time.Second), 5)
	cashier.State = pool.StateExpired
	secret := snapshot("secret", "SECRETKEY456789abcdef0123456789abcdef0123", expires, 2)
	secret.AllowUIDs = []uint32{7777}

	secrets := fuzzSecrets{}
	for _, s := range []*pool.Snapshot{pos, cashier, secret} {
		for _, v := range []string{s.Session.SessionKey, s.Session.Token, s.Session.IdentityToken} {
			secrets[v] = s.Name
		}
	}

	unavailable := func(name string) error {
		return &pool.UnavailableError{Name: name, RetryAfter: 7 * time.Second,
			Reason: &upstream.Error{Request: "verifyUser", Code: upstream.CodeMaintenance}}
	}
	fake := newFake(pos, cashier, secret)
	fake.GetFunc = func(_ context.Context, name string) (*pool.Snapshot, error) {
		switch name {
		case "pos":
			return pos, nil
		case "secret":
			return secret, nil
		case "cashier":
			return nil, unavailable(name)
		}
		return nil, fmt.Errorf("%w: %q", pool.ErrUnknownCredential, name)
	}
	fake.InvalidateFunc = func(ctx context.Context, name, staleKey string) (*pool.Snapshot, error) {
		return fake.GetFunc(ctx, name)
	}
	logs := &panicLog{}
	h := start(tb, fake, setup{tcp: true, log: logs, opts: func(o *localapi.Options) {
		o.TCPSessions = true
		// The caller is an ordinary user, not the daemon's own, so that
		// ALLOW_UIDS applies to it.
		o.PeerCred = func(net.Conn) (uid, gid, pid uint32, ok bool) { return 4242, 4242, 1, true }
		o.Proxy = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"status":{"responseStatus":"ok","errorCode":0},"records":[]}`)
		})
	}})
	return h, secrets, logs
}

// rawRequest is one request as bytes on the wire, built from fuzzed parts
// without any of net/http's client-side checks.
func rawRequest(method, path, query, hdrName, hdrValue string, body []byte) []byte {
	var b bytes.Buffer
	target := path
	if query != "" {
		target += "?" + query
	}
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: sessiond\r\n", method, target)
	if hdrName != "" {
		fmt.Fprintf(&b, "%s: %s\r\n", hdrName, hdrValue)
	}
	fmt.Fprintf(&b, "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", len(body))
	b.Write(body)
	return b.Bytes()
}

// exchange sends raw on a new connection to the Unix socket (or the TCP
// listener), half-closes it so a server waiting for more body sees the end,
// and reads the final (non-1xx) response. A nil response with a nil error
// means the server closed the connection without answering.
func exchange(h *harness, tcp bool, raw []byte, method string) (*http.Response, []byte, error) {
	network, addr := "unix", h.sock
	if tcp {
		network, addr = "tcp", h.tcp
	}
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return nil, nil, err
	}
	// A server that answers before reading everything may reset the
	// connection under a large write: that is not a failure of the API.
	_, _ = c.Write(raw)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, nil, err
			}
			return nil, nil, nil
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxFuzzBody+1))
		resp.Body.Close()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, nil, err
			}
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		return resp, body, nil
	}
}

// FuzzRoutes sends arbitrary requests (method, path, query, one header,
// body; over the Unix socket or TCP) to the API and checks what must hold
// for every one of them: the server answers in time and never panics, no
// 5xx but 503, a session route's 503 with Retry-After, no answer larger
// than maxFuzzBody, a secret only in a 200 on its own credential's route,
// never from an expired session, never to a socket peer ALLOW_UIDS
// excludes, never on TCP without the request header, never in a header.
func FuzzRoutes(f *testing.F) {
	type seed struct {
		method, path, query, hdrName, hdrValue, body string
		tcp                                          bool
	}
	long := strings.Repeat("a", 65)
	for _, s := range []seed{
		{"GET", "/v1/sessions/pos", "", "", "", "", false},
		{"GET", "/v1/sessions/pos/key", "", "", "", "", false},
		{"GET", "/v1/sessions/pos/jwt", "", "", "", "", false},
		{"GET", "/v1/sessions/pos/identity-token", "", "", "", "", false},
		{"GET", "/v1/sessions", "", "", "", "", false},
		{"GET", "/healthz", "", "", "", "", false},
		{"GET", "/readyz", "", "", "", "", false},
		{"GET", "/metrics", "", "Accept", "application/openmetrics-text", "", false},
		{"POST", "/v1/sessions/pos/invalidate", "", "", "", "key=POSKEY0123456789abcdef0123456789abcdef01", false},
		{"POST", "/v1/sessions/pos/invalidate", "key=old", "", "", "", false},
		{"POST", "/v1/sessions/cashier/invalidate", "", "", "", "key=x", false},
		{"POST", "/v1/sessions/pos/invalidate", "", "", "", "key=%zz", false},
		{"POST", "/v1/sessions/pos/api", "", "", "", "request=getProducts", false},
		{"GET", "/v1/sessions/pos/endpoints/customerRegistryURLs", "", "", "", "", false},
		{"GET", "/v1/sessions/pos/endpoints/cayanGatewayURLs/pick", "", "", "", "", false},
		{"GET", "/v1/sessions/pos/endpoints/couponRegistryURLs/pick", "", "", "", "", false},
		{"POST", "/v1/sessions/pos/endpoints/customerRegistryURLs/down", "", "", "", "url=https://cr-a.example/", false},
		{"POST", "/v1/sessions/pos/endpoints/cayanGatewayURLs/down", "target=cayan1.example:443", "", "", "", false},
		{"GET", "/v1/sessions/cashier/key", "", "", "", "", false},
		{"GET", "/v1/sessions/secret/key", "", "", "", "", false},
		{"GET", "/v1/sessions/secret", "", "", "", "", false},
		{"GET", "/v1/sessions/nobody/key", "", "", "", "", false},
		// Path traversal, encoded and not, and names that are not names.
		{"GET", "/v1/sessions/../x", "", "", "", "", false},
		{"GET", "/v1/sessions/pos/../secret/key", "", "", "", "", false},
		{"GET", "/v1/sessions/%2e%2e/key", "", "", "", "", false},
		{"GET", "/v1/sessions/%2E%2E/%2e%2e/healthz", "", "", "", "", false},
		{"GET", "/v1/sessions/pos%2fkey", "", "", "", "", false},
		{"GET", "/v1/sessions/pos/endpoints/..%2f..%2fsecret/pick", "", "", "", "", false},
		{"GET", "//v1/sessions/pos/key", "", "", "", "", false},
		{"GET", "/v1/sessions/./pos/key", "", "", "", "", false},
		{"GET", "/v1/sessions/POS/key", "", "", "", "", false},
		{"GET", "/v1/sessions/%70os/key", "", "", "", "", false},
		{"GET", "/v1/sessions/" + long + "/key", "", "", "", "", false},
		{"GET", "/v1/sessions/" + strings.Repeat("x", 20000), "", "", "", "", false},
		{"GET", "/v1/sessions/pos/endpoints/" + long + "/pick", "", "", "", "", false},
		{"GET", "/v1/sessions/pos\x00/key", "", "", "", "", false},
		{"GET", "/v1/sessions/pos%00/key", "", "", "", "", false},
		{"GET", "/v1/sessions/pos%/key", "", "", "", "", false},
		{"GET", "http://sessiond/v1/sessions/pos/key", "", "", "", "", false},
		{"OPTIONS", "*", "", "", "", "", false},
		{"CONNECT", "sessiond:80", "", "", "", "", false},
		{"HEAD", "/v1/sessions/pos/key", "", "", "", "", false},
		{"DELETE", "/v1/sessions/pos", "", "", "", "", false},
		{"get", "/v1/sessions/pos/key", "", "", "", "", false},
		{"GET", "/v1/sessions/pos/key", "", "Transfer-Encoding", "chunked", "5\r\nhello\r\n0\r\n\r\n", false},
		{"POST", "/v1/sessions/pos/invalidate", "", "Expect", "100-continue", "key=a", false},
		{"POST", "/v1/sessions/pos/invalidate", "", "Content-Type", "multipart/form-data; boundary=x", "--x\r\n", false},
		{"POST", "/v1/sessions/pos/invalidate", "", "", "", strings.Repeat("key=a&", 12000), false},
		{"GET", "/v1/sessions/pos/key", "", "X-Sessiond-Request", "1", "", true},
		{"GET", "/v1/sessions/pos/key", "", "", "", "", true},
		{"GET", "/v1/sessions/pos", "", "X-Sessiond-Request", "0", "", true},
		{"GET", "/v1/sessions/secret/key", "", "X-Sessiond-Request", "1", "", true},
		{"GET", "/metrics", "", "", "", "", true},
	} {
		f.Add(s.method, s.path, s.query, s.hdrName, s.hdrValue, []byte(s.body), s.tcp)
	}

	h, secrets, logs := fuzzServer(f)
	f.Fuzz(func(t *testing.T, method, path, query, hdrName, hdrValue string, body []byte, tcp bool) {
		raw := rawRequest(method, path, query, hdrName, hdrValue, body)
		resp, respBody, err := exchange(h, tcp, raw, method)
		if err != nil {
			t.Fatalf("%q: no answer in time: %v", raw, err)
		}
		if l := logs.take(); len(l) > 0 {
			t.Fatalf("%q: the server panicked:\n%s", raw, strings.Join(l, "\n"))
		}
		if resp == nil {
			// Closed without an answer (and without a panic): net/http does
			// that for a few inputs, e.g. an empty request.
			return
		}
		// net/http itself answers 501 to a transfer coding it does not know
		// (RFC 9112 6.1), before any handler runs.
		unknownTE := resp.StatusCode == http.StatusNotImplemented && string(respBody) == "Unsupported transfer encoding"
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable && !unknownTE {
			t.Fatalf("%q: status %d: %s", raw, resp.StatusCode, respBody)
		}
		if len(respBody) > maxFuzzBody {
			t.Fatalf("%q: answer of more than %d bytes", raw, maxFuzzBody)
		}
		if resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(path, "/sessions/") && resp.Header.Get("Retry-After") == "" {
			t.Fatalf("%q: 503 without Retry-After", raw)
		}
		var hdr bytes.Buffer
		_ = resp.Header.Write(&hdr)
		for secret, owner := range secrets {
			if bytes.Contains(hdr.Bytes(), []byte(secret)) {
				t.Fatalf("%q: a secret of %s in the headers:\n%s", raw, owner, hdr.String())
			}
			if !bytes.Contains(respBody, []byte(secret)) {
				continue
			}
			switch {
			case resp.StatusCode != http.StatusOK:
				t.Fatalf("%q: a secret of %s in a %d answer: %s", raw, owner, resp.StatusCode, respBody)
			case owner == "cashier" || (owner == "secret" && !tcp):
				// cashier has no valid session; secret's ALLOW_UIDS excludes
				// the socket peer (TCP has no peer: the header guards it).
				t.Fatalf("%q: a secret of %s, which this caller may not have: %s", raw, owner, respBody)
			case tcp && !bytes.Contains(bytes.ToLower(raw), []byte("\n"+strings.ToLower(localapi.RequestHeader)+":")):
				t.Fatalf("%q: a secret on TCP without %s: 1", raw, localapi.RequestHeader)
			case !onCredentialRoute(path, owner):
				t.Fatalf("%q: a secret of %s on another route: %s", raw, owner, respBody)
			}
		}
	})
}

// onCredentialRoute reports whether the request target path, decoded,
// addresses credential name's own routes.
func onCredentialRoute(path, name string) bool {
	if u, err := url.Parse(path); err == nil && u.Path != "" {
		path = u.Path
	}
	p := "/v1/sessions/" + name
	return path == p || strings.HasPrefix(path, p+"/")
}
