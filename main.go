// Command erply-sessiond logs in to the Erply API once per configured credential, keeps the sessions alive, and serves them to local processes over a Unix socket.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/erply-sessiond/erply-sessiond/sdnotify"
)

// version is stamped at build time: -ldflags "-X main.version=…".
var version = "dev"

// Exit statuses, the same for every command; README.md ("Exit status")
// documents them and systemd/erply-sessiond.service names exitConfig in
// RestartPreventExitStatus=.
const (
	exitOK          = 0  // done; for the daemon also a stop asked for by SIGTERM or SIGINT
	exitFailure     = 1  // a failure while running; for get, the daemon answered with an error
	exitUsage       = 2  // unknown command, bad flags or arguments
	exitUnreachable = 3  // get: no daemon answers on the socket
	exitConfig      = 78 // invalid configuration (sysexits.h EX_CONFIG): restarting will not help
)

func main() {
	code, err := exitStatus(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	if err != nil {
		fmt.Fprintln(os.Stderr, "erply-sessiond:", err)
	}
	os.Exit(code)
}

// exitStatus is the process's exit status for what run returned, and the
// error still to print (nil when there is none or it was already reported).
func exitStatus(err error) (int, error) {
	if err == nil {
		return exitOK, nil
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code, ee.err
	}
	return exitFailure, err
}

// exitError carries the exit status for errors that need one other than
// exitFailure (or that were already reported: err nil).
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e exitError) Unwrap() error { return e.err }

// run is the whole program. It alone touches the process: it owns the
// signals and reads the environment once.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	// SIGHUP asks a serving daemon to reload; the other commands ignore it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	environ := os.Environ()
	// The passed sockets are this process's alone (sd_listen_fds(3)'s
	// unset_environment): no child may take them for its own.
	for _, k := range sdnotify.ActivationVars {
		os.Unsetenv(k)
	}
	return runEnv(ctx, args, environ, hup, stdout, stderr)
}

const usage = `erply-sessiond keeps Erply API sessions alive and serves them on a Unix socket.

Usage:
  erply-sessiond                 run the daemon (configured by SESSIOND_* variables)
  erply-sessiond demo            run against an embedded fake Erply, on ./sessiond.sock
  erply-sessiond get NAME [WHAT] print a credential's key, jwt, identity-token or json
  erply-sessiond rotate-password NAME  change a password credential's password (Erply changePassword)
  erply-sessiond status          show every credential's state (exit 0 when all are ok)
  erply-sessiond check-config    validate the configuration and print a summary
  erply-sessiond version         print the version

Run "erply-sessiond COMMAND -h" for a command's flags and variables.
Exit status: 0 ok, 1 failure (status: a credential not ok), 2 usage, 3 no daemon (get, status), 78 invalid configuration.
`

// runEnv dispatches the commands with an explicit environment and reload
// signal (tests pass their own).
func runEnv(ctx context.Context, args, environ []string, hup <-chan os.Signal, stdout, stderr io.Writer) error {
	cmd := ""
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "", "serve", "run":
		return serveCommand(ctx, args, environ, hup, stderr)
	case "demo":
		return demoCommand(ctx, args, environ, hup, stdout, stderr)
	case "get":
		return getCommand(ctx, args, environ, stdout, stderr)
	case "rotate-password":
		return rotatePasswordCommand(ctx, args, environ, stdout, stderr)
	case "status":
		return statusCommand(ctx, args, environ, stdout, stderr)
	case "check-config":
		return checkConfigCommand(args, environ, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "erply-sessiond %s\n", version)
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return exitError{code: exitUsage, err: fmt.Errorf("unknown command %q", cmd)}
}
