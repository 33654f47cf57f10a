package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/internal/daemon"
)

const serveUsage = `Usage: erply-sessiond [serve]

Runs the daemon: logs in every credential in SESSIOND_CREDENTIALS, keeps the
sessions alive, and serves them on the Unix socket SESSIOND_SOCKET until
SIGTERM or SIGINT. SIGHUP reloads SESSIOND_ENV_FILE and the _FILE secrets.
Exits 0 when stopped, 78 on an invalid configuration, 1 on another failure.

Global variables (defaults in brackets):
  SESSIOND_CREDENTIALS        comma-separated credential names (a-z, 0-9, _)
  SESSIOND_SOCKET             [/run/erply-sessiond/sessiond.sock]
  SESSIOND_SOCKET_MODE        octal [0660]
  SESSIOND_HTTP_ADDR          loopback host:port for health/readiness/metrics [off]
  SESSIOND_HTTP_SESSIONS      also serve session routes on HTTP_ADDR (header X-Sessiond-Request: 1) [false]
  SESSIOND_LOG_LEVEL          debug | info | warn | error [info]
  SESSIOND_LOG_FORMAT         json | console [json]
  SESSIOND_API_URL            [https://{clientCode}.erply.com/api/]
  SESSIOND_ENDPOINT_COOLDOWN  [30s]
  SESSIOND_REFRESH_FRACTION   [0.67]
  SESSIOND_EXPIRY_MARGIN      [60s]
  SESSIOND_PROXY_CONCURRENCY  upstream requests at once per client code [10]
  SESSIOND_ENV_FILE           KEY=VALUE file re-read on SIGHUP (wins over the environment)
  SESSIOND_ENV_FILE_WATCH     also apply a change of SESSIOND_ENV_FILE by itself, within 10 s [false]
  SESSIOND_STATE_DIR          private directory of the sessions saved across restarts [$STATE_DIRECTORY, else off]

Per credential NAME (SESSIOND_<NAME>_…):
  KIND            password | pin | identity | oauth [password]
  CLIENT_CODE     Erply account code (not for pin)
  USERNAME, PASSWORD or PASSWORD_FILE      (password)
  PARENT, PIN or PIN_FILE                  (pin)
  TOKEN_FILE or TOKEN                      (identity, oauth)
  SESSION_LENGTH  seconds, 1..86400 [3600]
  API_URL, ALLOW_UIDS, ALLOW_GIDS, SINK_FILE, SINK_MODE [0640]
  ROTATE_PASSWORD never | expired [never] (password; needs PASSWORD_FILE)
`

func serveCommand(ctx context.Context, args, environ []string, hup <-chan os.Signal, stderr io.Writer) error {
	fs := flag.NewFlagSet("erply-sessiond", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, serveUsage) }
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	cfg, err := loadConfig(environ, stderr)
	if err != nil {
		return err
	}
	d, err := daemon.New(cfg, daemon.Options{Environ: environ, LogOutput: stderr, Version: version})
	if err != nil {
		return configError(err, stderr)
	}
	return serveDaemon(ctx, d, hup)
}

// serveDaemon runs d until ctx ends, reloading it at every SIGHUP.
func serveDaemon(ctx context.Context, d *daemon.Daemon, hup <-chan os.Signal) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				// A rejected configuration is the daemon's to log and
				// show in /readyz; the old one keeps running.
				_ = d.Reload()
			}
		}
	})
	err := d.Run(ctx)
	cancel()
	wg.Wait()
	return err
}

func flagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return exitError{code: exitUsage, err: err}
}

// loadConfig loads and validates, printing every problem on its own line.
func loadConfig(environ []string, stderr io.Writer) (*config.Config, error) {
	cfg, err := config.Load(environ)
	if err != nil {
		return nil, configError(err, stderr)
	}
	return cfg, nil
}

// configError prints each problem of a *config.ValidationError on its own
// line and turns it into the invalid-configuration exit status; other
// errors pass through.
func configError(err error, stderr io.Writer) error {
	var ve *config.ValidationError
	if errors.As(err, &ve) {
		for _, p := range ve.Problems {
			fmt.Fprintln(stderr, "config:", p.String())
		}
		return exitError{code: exitConfig, err: fmt.Errorf("invalid configuration (%d problems)", len(ve.Problems))}
	}
	return err
}
