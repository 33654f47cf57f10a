package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/erply-sessiond/erply-sessiond/client"
	"github.com/erply-sessiond/erply-sessiond/config"
)

const getUsage = `Usage: erply-sessiond get [-socket PATH] [-timeout D] NAME [key|jwt|identity-token|json]
       erply-sessiond get [-socket PATH] --health | --ready

Reads from a running daemon, for scripts without curl. Prints the session key
(default), the Erply JWT, the Identity JWT, or the whole session as JSON;
exits 1 with the daemon's error when it answers with one, 3 when no daemon
answers, 2 on bad arguments. --health exits 0 while the daemon serves;
--ready exits 0 when every credential has a valid session (use them as
container health checks: no shell or curl needed).
The socket is -socket, else SESSIOND_SOCKET, else /run/erply-sessiond/sessiond.sock.
`

func getCommand(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, getUsage); fs.PrintDefaults() }
	socket := fs.String("socket", "", "daemon socket (default $SESSIOND_SOCKET or "+client.DefaultSocket+")")
	timeout := fs.Duration("timeout", 35*time.Second, "give up after this long")
	health := fs.Bool("health", false, "check that the daemon serves")
	ready := fs.Bool("ready", false, "check that every credential has a valid session")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	c := client.New(socketPath(*socket, environ))
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	switch {
	case *health:
		return exitOn(c.Health(ctx))
	case *ready:
		return exitOn(c.Ready(ctx))
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		fs.Usage()
		return exitError{code: exitUsage, err: errors.New("get: want NAME and optionally what to print")}
	}
	name, what := fs.Arg(0), "key"
	if fs.NArg() == 2 {
		what = fs.Arg(1)
	}
	route := "/v1/sessions/" + url.PathEscape(name)
	switch what {
	case "key", "jwt", "identity-token":
		v, err := c.Text(ctx, route+"/"+what)
		if err != nil {
			return exitOn(err)
		}
		fmt.Fprintln(stdout, v)
		return nil
	case "json":
		s, err := c.Text(ctx, route)
		if err != nil {
			return exitOn(err)
		}
		fmt.Fprintln(stdout, strings.TrimSpace(s))
		return nil
	}
	return exitError{code: exitUsage, err: fmt.Errorf("get: unknown %q (want key, jwt, identity-token or json)", what)}
}

// exitOn maps a client error to exitFailure (the daemon said no) or
// exitUnreachable (no daemon).
func exitOn(err error) error {
	if err == nil {
		return nil
	}
	var ce *client.Error
	if errors.As(err, &ce) {
		return exitError{code: exitFailure, err: err}
	}
	return exitError{code: exitUnreachable, err: err}
}

// lookupEnv answers key from environ as os.Getenv and config.Load do: the
// first of duplicate entries wins.
func lookupEnv(environ []string, key string) string {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

func checkConfigCommand(args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: erply-sessiond check-config\n\nValidates the SESSIOND_* configuration (and SESSIOND_ENV_FILE, and that every _FILE\nsecret is readable) like the daemon would at start. Prints one problem per line and\nexits 78, or one summary line per credential (no secrets) and exits 0.\n\n")
		fmt.Fprint(stderr, serveUsage[strings.Index(serveUsage, "Global variables"):])
	}
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if err := config.CheckConfig(environ, stdout); err != nil {
		var ve *config.ValidationError
		if errors.As(err, &ve) {
			return exitError{code: exitConfig}
		}
		return exitError{code: exitFailure}
	}
	return nil
}

// socketPath is the daemon's socket for a client command: the -socket
// flag, else SESSIOND_SOCKET, else the default path.
func socketPath(flagValue string, environ []string) string {
	if flagValue != "" {
		return flagValue
	}
	if v := lookupEnv(environ, config.VarSocket); v != "" {
		return v
	}
	return client.DefaultSocket
}
