package localapi_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/localapi"
)

// Issue 16 item 5: the routes accept every name config accepts (the
// longest included), and nothing longer; one rule, config.ValidName.
func TestRoutesServeEveryNameConfigAccepts(t *testing.T) {
	longest := strings.Repeat("n", config.MaxNameLen)
	h := start(t, newFake(snapshot(longest, "key-longest", t0.Add(time.Hour), 1)), setup{})
	if r := h.get("/v1/sessions/" + longest + "/key"); r.status != http.StatusOK || r.body != "key-longest\n" {
		t.Fatalf("a %d-character name: %d %q", config.MaxNameLen, r.status, r.body)
	}
	if r := h.get("/v1/sessions/" + longest + "n/key"); r.status != http.StatusNotFound {
		t.Fatalf("a %d-character name: %d, want 404", config.MaxNameLen+1, r.status)
	}
}

// Issue 16 item 3: a daemon stopping removed the socket at its path even
// when another daemon had since made its own socket there, leaving that
// one running and unreachable. Shutdown removes the socket only while it
// is the one ListenUnix made (same device and inode).
func TestShutdownLeavesAnotherDaemonsSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "s.sock")
	srv := localapi.New(localapi.Options{Sessions: newFake(), Clock: clock.NewFake(t0)})
	l, err := localapi.ListenUnix(path, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l, false) }()

	// A second daemon on the same path: the file is replaced.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the other daemon's socket is gone after the first one stopped: %v", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the other daemon is unreachable: %v", err)
	}
	c.Close()
}

// The socket ListenUnix made is still removed when it is closed.
func TestListenUnixRemovesItsOwnSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "s.sock")
	l, err := localapi.ListenUnix(path, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
}
