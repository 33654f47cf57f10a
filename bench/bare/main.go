// Command bare is the benchmark's floor: a bare net/http server on a Unix socket answering fixed bytes for a few paths.
//
// Usage:
//
//	bare -socket PATH -route 'URLPATH,BODYFILE,CONTENT-TYPE' [-route …]
//
// Each route answers any request with 200, the file's bytes and the
// Content-Type given (net/http adds Date and Content-Length, as for the
// daemon); any other path gets 404. The bodies are read once at start. It
// serves until SIGTERM or SIGINT, then removes the socket.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
}

// answer is one route's fixed reply.
type answer struct {
	contentType []string
	body        []byte
}

// routeFlags collects repeated -route values.
type routeFlags map[string]answer

func (r routeFlags) String() string { return fmt.Sprintf("%d routes", len(r)) }

func (r routeFlags) Set(v string) error {
	path, rest, ok1 := strings.Cut(v, ",")
	file, ct, ok2 := strings.Cut(rest, ",")
	if !ok1 || !ok2 || !strings.HasPrefix(path, "/") || file == "" || ct == "" {
		return fmt.Errorf("%q: want URLPATH,BODYFILE,CONTENT-TYPE", v)
	}
	body, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	r[path] = answer{contentType: []string{ct}, body: body}
	return nil
}

// run serves until ctx ends. listening, if not nil, is called once the
// socket accepts connections.
func run(ctx context.Context, args []string, stderr io.Writer, listening func()) error {
	fs := flag.NewFlagSet("bare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", "", "Unix socket to serve on (required; must not exist)")
	routes := routeFlags{}
	fs.Var(routes, "route", "URLPATH,BODYFILE,CONTENT-TYPE (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *socket == "" || len(routes) == 0 || fs.NArg() > 0 {
		return errors.New("want -socket and at least one -route, and no arguments")
	}
	l, err := net.Listen("unix", *socket)
	if err != nil {
		return err
	}
	// The listener unlinks the socket when it is closed.
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, ok := routes[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header()["Content-Type"] = a.contentType
		_, _ = w.Write(a.body)
	})}
	done := make(chan error, 1)
	go func() { done <- hs.Serve(l) }()
	if listening != nil {
		listening()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	if err := hs.Close(); err != nil {
		return err
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
