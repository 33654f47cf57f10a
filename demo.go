package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/internal/daemon"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

const demoUsage = `Usage: erply-sessiond demo [-socket PATH] [-session-length SECONDS] [-http ADDR]

Starts an embedded fake Erply (an account with a manager who logs in with a
password and a cashier who switches in with a PIN), configures two
credentials against it — "pos" (password) and "cashier" (pin, on top of pos)
— and serves them on the socket until Ctrl-C, printing curl commands to try.
Nothing leaves the machine. SESSIOND_LOG_LEVEL and SESSIOND_LOG_FORMAT apply
(console logs by default here).
`

func demoCommand(ctx context.Context, args, environ []string, hup <-chan os.Signal, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, demoUsage); fs.PrintDefaults() }
	socket := fs.String("socket", "./sessiond.sock", "Unix socket to serve on")
	length := fs.Int("session-length", 300, "session length in seconds asked of the fake Erply (short, to see refreshes)")
	httpAddr := fs.String("http", "", "also serve health, readiness and metrics on this loopback address, e.g. 127.0.0.1:8089")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	sock, err := filepath.Abs(*socket)
	if err != nil {
		return err
	}

	fake := erplytest.New(clock.Real{})
	defer fake.Close()
	code, user, password, pin := fake.SeedDemo()

	env := map[string]string{
		"SESSIOND_LOG_FORMAT":             "console",
		"SESSIOND_LOG_LEVEL":              "info",
		"SESSIOND_CREDENTIALS":            "pos,cashier",
		"SESSIOND_SOCKET":                 sock,
		"SESSIOND_API_URL":                fake.APIURL(),
		"SESSIOND_POS_CLIENT_CODE":        code,
		"SESSIOND_POS_USERNAME":           user,
		"SESSIOND_POS_PASSWORD":           password,
		"SESSIOND_POS_SESSION_LENGTH":     strconv.Itoa(*length),
		"SESSIOND_CASHIER_KIND":           "pin",
		"SESSIOND_CASHIER_PARENT":         "pos",
		"SESSIOND_CASHIER_PIN":            pin,
		"SESSIOND_CASHIER_SESSION_LENGTH": strconv.Itoa(*length),
	}
	if *httpAddr != "" {
		env["SESSIOND_HTTP_ADDR"] = *httpAddr
	}
	// The operator's own log settings win; nothing else of theirs applies.
	for _, kv := range environ {
		for _, k := range []string{"SESSIOND_LOG_LEVEL", "SESSIOND_LOG_FORMAT"} {
			if len(kv) > len(k) && kv[:len(k)+1] == k+"=" {
				env[k] = kv[len(k)+1:]
			}
		}
	}
	demoEnv := make([]string, 0, len(env))
	for k, v := range env {
		demoEnv = append(demoEnv, k+"="+v)
	}
	cfg, err := loadConfig(demoEnv, stderr)
	if err != nil {
		return err
	}
	d, err := daemon.New(cfg, daemon.Options{Environ: demoEnv, LogOutput: stderr, Version: version,
		Ready: func() { printDemo(stdout, sock, *httpAddr) }})
	if err != nil {
		return err
	}
	return serveDaemon(ctx, d, hup)
}

func printDemo(w io.Writer, sock, httpAddr string) {
	c := "curl -fsS --unix-socket " + sock + " http://localhost"
	fmt.Fprintf(w, `
erply-sessiond demo is ready: fake Erply with credentials "pos" (password) and "cashier" (PIN).
Try, in another terminal:

  %[1]s/v1/sessions
  %[1]s/v1/sessions/pos
  %[1]s/v1/sessions/pos/key
  %[1]s/v1/sessions/cashier/jwt
  %[1]s/v1/sessions/pos/endpoints/customerRegistryURLs
  %[1]s/v1/sessions/pos/endpoints/customerRegistryURLs/pick
  %[1]s/v1/sessions/pos/invalidate -d key="$(%[1]s/v1/sessions/pos/key)"
  %[1]s/v1/sessions/pos/api -d request=getProducts -d recordsOnPage=2
  %[1]s/readyz
  %[1]s/metrics | grep erply_sessiond_
  go run . get -socket %[2]s pos key

Ctrl-C stops the daemon and removes the socket.
`, c, sock)
	if httpAddr != "" {
		fmt.Fprintf(w, "  curl -fsS http://%s/readyz\n", httpAddr)
	}
}
