package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/erply-sessiond/erply-sessiond/client"
)

const rotateUsage = `Usage: erply-sessiond rotate-password [-socket PATH] [-timeout D] [-json] NAME

Asks the running daemon to change the password of credential NAME with
Erply's changePassword: a new random password is written to
PASSWORD_FILE.next, Erply changes it, the file is replaced (its mode kept)
and the session changePassword returns is served at once, to every reader,
pin credential and sink. Only root and the daemon's own user may ask, over
the Unix socket; the credential must be of kind password with a
PASSWORD_FILE the daemon can rewrite.

Prints the new session's expiry (-json: the new session as JSON). Exits 1
with the daemon's error when it refuses (409: this credential cannot be
rotated; 502: Erply refused and the password is unchanged, or Erply's answer
was lost), 3 when no daemon answers, 2 on bad arguments.
The socket is -socket, else SESSIOND_SOCKET, else /run/erply-sessiond/sessiond.sock.
`

// rotatePasswordCommand is `erply-sessiond rotate-password NAME`, a client
// of POST /v1/sessions/{name}/rotate-password.
func rotatePasswordCommand(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rotate-password", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, rotateUsage); fs.PrintDefaults() }
	socket := fs.String("socket", "", "daemon socket (default $SESSIOND_SOCKET or "+client.DefaultSocket+")")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up waiting after this long (the daemon finishes a change it has sent to Erply)")
	asJSON := fs.Bool("json", false, "print the new session as JSON")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitError{code: exitUsage, err: errors.New("rotate-password: want exactly one credential NAME")}
	}
	c := client.New(socketPath(*socket, environ))
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	name := fs.Arg(0)
	s, err := c.RotatePassword(ctx, name)
	if err != nil {
		return exitOn(err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false)
		return enc.Encode(s)
	}
	fmt.Fprintf(stdout, "%s: password rotated; the new session expires at %s\n", name, s.ExpiresAt.UTC().Format(time.RFC3339))
	return nil
}
