package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/client"
	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/localapi"
	"github.com/erply-sessiond/erply-sessiond/login"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/proxy"
	"github.com/erply-sessiond/erply-sessiond/upstream"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// daemon assembles what erply-sessiond runs — the pool, the local API and
// the proxy on a Unix socket — against the fake Erply, with one password
// credential "pos". It returns the socket path and a stop function.
func daemon() (socket string, stop func()) {
	fake := erplytest.New(clock.Real{})
	code, user, pw, _ := fake.SeedDemo()
	up := upstream.New(upstream.Options{Logger: zerolog.Nop()})
	p, err := pool.New(pool.Options{MethodFor: login.Methods(up), Upstream: up, Logger: zerolog.Nop(), Credentials: []config.Credential{{
		Name: "pos", Kind: config.KindPassword, ClientCode: code, APIURL: fake.APIURL(),
		Username: user, Password: config.Secret{Value: pw}, SessionLength: 3600,
	}}})
	if err != nil {
		panic(err)
	}
	if err := p.Open(context.Background()); err != nil {
		panic(err)
	}
	px := proxy.New(proxy.Options{Sessions: p, Logger: zerolog.Nop()})
	api := localapi.New(localapi.Options{Sessions: p, Proxy: px, Logger: zerolog.Nop()})
	dir, err := os.MkdirTemp("", "sdc")
	if err != nil {
		panic(err)
	}
	socket = filepath.Join(dir, "s.sock")
	l, err := localapi.ListenUnix(socket, 0o600)
	if err != nil {
		panic(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); api.Serve(l, false) }()
	return socket, func() {
		api.Shutdown(context.Background())
		<-done
		p.Close()
		px.CloseIdleConnections()
		up.CloseIdleConnections()
		fake.Close()
		os.RemoveAll(dir)
	}
}

func ExampleClient_Key() {
	socket, stop := daemon()
	defer stop()

	c := client.New(socket)
	defer c.CloseIdleConnections()
	key, err := c.Key(context.Background(), "pos")
	if err != nil {
		fmt.Println("no key:", err)
		return
	}
	fmt.Println("got a session key:", len(key) >= 32)
	// Output: got a session key: true
}

func ExampleClient_Session() {
	socket, stop := daemon()
	defer stop()

	c := client.New(socket)
	defer c.CloseIdleConnections()
	s, err := c.Session(context.Background(), "pos")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(s.ClientCode, s.UserName, s.GroupName, s.ExpiresIn > 3000)
	// Output: 104729 manager@demo.example Administrators true
}

// A caller whose Erply call failed with 1054/1055 reports the key it used;
// the daemon logs in again (once, however many callers report it) and
// answers the new session.
func ExampleClient_Invalidate() {
	socket, stop := daemon()
	defer stop()

	c := client.New(socket)
	defer c.CloseIdleConnections()
	ctx := context.Background()
	stale, _ := c.Key(ctx, "pos")
	s, err := c.Invalidate(ctx, "pos", stale)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("new key:", s.SessionKey != stale)
	// Output: new key: true
}

func ExampleClient_Endpoint() {
	socket, stop := daemon()
	defer stop()

	c := client.New(socket)
	defer c.CloseIdleConnections()
	ctx := context.Background()
	// The first of the RFC 2782 order: the lowest priority, chosen by weight.
	ep, err := c.Endpoint(ctx, "pos", "customerRegistryURLs")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(ep == "https://cr-a.example/" || ep == "https://cr-b.example/")
	// Report it down: it goes last for the cool-down.
	if err := c.MarkDown(ctx, "pos", "customerRegistryURLs", ep); err != nil {
		fmt.Println(err)
		return
	}
	next, _ := c.Endpoint(ctx, "pos", "customerRegistryURLs")
	fmt.Println(next != ep)
	// Output:
	// true
	// true
}

// Call runs an Erply API call through the daemon: no clientCode or
// sessionKey in the form, and a key that expired meanwhile is replaced and
// the call re-sent once, by the daemon.
func ExampleClient_Call() {
	socket, stop := daemon()
	defer stop()

	c := client.New(socket)
	defer c.CloseIdleConnections()
	reply, err := c.Call(context.Background(), "pos", url.Values{"request": {"getProducts"}, "recordsOnPage": {"20"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	var r struct {
		Status struct {
			Request        string `json:"request"`
			ResponseStatus string `json:"responseStatus"`
		} `json:"status"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r.Status.Request, r.Status.ResponseStatus)
	// Output: getProducts ok
}

func TestErrors(t *testing.T) {
	socket, stop := daemon()
	defer stop()
	c := client.New(socket)
	defer c.CloseIdleConnections()
	ctx := context.Background()

	_, err := c.Key(ctx, "nope")
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != 404 || ce.Code != "unknown_credential" {
		t.Fatalf("unknown credential: %v", err)
	}
	if errors.Is(err, client.ErrUnavailable) {
		t.Fatal("a 404 matched ErrUnavailable")
	}
	_, err = c.Call(ctx, "pos", url.Values{"request": {"getProducts"}, "sessionKey": {"mine"}})
	if !errors.As(err, &ce) || ce.Status != 400 {
		t.Fatalf("caller-supplied sessionKey: %v, want 400", err)
	}
	if strings.Contains(err.Error(), "mine") {
		t.Fatal("the error echoes the caller's sessionKey")
	}
	if err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := client.New(filepath.Join(t.TempDir(), "none.sock")).Key(ctx, "pos"); err == nil || errors.As(err, &ce) {
		t.Fatalf("no daemon: %v, want a transport error", err)
	}
}
