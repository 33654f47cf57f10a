package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/erply-sessiond/erply-sessiond/client"
)

const statusUsage = `Usage: erply-sessiond status [-socket PATH] [-json] [-timeout D]

Asks the running daemon how every credential is doing and prints a table:
credential, kind, state, time to expiry, next refresh, logins since start and
the last error (plus whether Erply says the password expired, and the fleet
role, when those apply). -json prints the daemon's listing as JSON instead.
Exits 0 when every credential is ok (a valid session, last refresh fine),
1 when any is not, 3 when the daemon cannot be reached; so "status && …"
works in scripts.
The socket is -socket, else SESSIOND_SOCKET, else /run/erply-sessiond/sessiond.sock.
`

func statusCommand(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, statusUsage); fs.PrintDefaults() }
	socket := fs.String("socket", "", "daemon socket (default $SESSIOND_SOCKET or "+client.DefaultSocket+")")
	asJSON := fs.Bool("json", false, "print the listing as JSON")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return exitError{code: exitUsage, err: errors.New("status: takes no arguments")}
	}
	c := client.New(socketPath(*socket, environ))
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	creds, err := c.Sessions(ctx)
	if err != nil {
		return exitOn(err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(creds); err != nil {
			return err
		}
	} else {
		writeStatus(stdout, creds, time.Now())
	}
	for _, cr := range creds {
		if !cr.Healthy() {
			return exitError{code: exitFailure}
		}
	}
	return nil
}

// writeStatus renders the listing as a table for people, times relative
// to now.
func writeStatus(w io.Writer, creds []client.Credential, now time.Time) {
	var pwCol, fleetCol bool
	for _, c := range creds {
		pwCol = pwCol || c.Kind == "password" || c.Kind == ""
		fleetCol = fleetCol || (c.Fleet != "" && c.Fleet != "off")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := []string{"CREDENTIAL", "KIND", "STATE", "EXPIRES IN", "NEXT REFRESH", "LOGINS"}
	if pwCol {
		head = append(head, "PASSWORD")
	}
	if fleetCol {
		head = append(head, "FLEET")
	}
	head = append(head, "LAST ERROR")
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, c := range creds {
		row := []string{c.Name, c.Kind, c.State, until(c.ExpiresAt, now), until(c.RefreshAt, now), fmt.Sprint(c.Logins)}
		if pwCol {
			pw := "-"
			switch {
			case c.PasswordExpired:
				pw = "expired"
			case c.Kind == "password" || c.Kind == "":
				pw = "ok"
			}
			row = append(row, pw)
		}
		if fleetCol {
			f := c.Fleet
			if f == "" {
				f = "off"
			}
			if c.FleetError != "" {
				f += " (" + oneLine(c.FleetError, 40) + ")"
			}
			row = append(row, f)
		}
		last := "-"
		if c.LastError != "" {
			last = oneLine(c.LastError, 80)
		}
		row = append(row, last)
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
}

// until renders a point in time as a whole-second duration from now: "41m0s",
// "-5s" once past, "-" when unknown.
func until(t *time.Time, now time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.Sub(now).Truncate(time.Second).String()
}

// oneLine keeps a message to one table cell: first line, at most n runes.
func oneLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	s = strings.ReplaceAll(s, "\t", " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
