package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestServesFixedBytes checks the floor server answers each route with the
// file's exact bytes and Content-Type, 404 elsewhere, and removes its socket
// when stopped.
func TestServesFixedBytes(t *testing.T) {
	dir := t.TempDir()
	keyFile, jsonFile := filepath.Join(dir, "key"), filepath.Join(dir, "json")
	if err := os.WriteFile(keyFile, []byte("0123abcd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(jsonFile, []byte(`{"ready":true}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listening := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-socket", sock,
			"-route", "/v1/sessions/pos/key," + keyFile + ",text/plain; charset=utf-8",
			"-route", "/readyz," + jsonFile + ",application/json"}, io.Discard, func() { close(listening) })
	}()
	select {
	case <-listening:
	case err := <-errc:
		t.Fatal(err)
	}

	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	for _, tc := range []struct {
		path, status, ct, body string
	}{
		{"/v1/sessions/pos/key", "200 OK", "text/plain; charset=utf-8", "0123abcd\n"},
		{"/readyz", "200 OK", "application/json", `{"ready":true}` + "\n"},
		{"/v1/sessions/pos", "404 Not Found", "text/plain; charset=utf-8", "404 page not found\n"},
	} {
		res, err := c.Get("http://localhost" + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if res.Status != tc.status || res.Header.Get("Content-Type") != tc.ct || string(b) != tc.body {
			t.Errorf("GET %s = %s %q %q, want %s %q %q", tc.path, res.Status, res.Header.Get("Content-Type"), b, tc.status, tc.ct, tc.body)
		}
	}
	c.CloseIdleConnections()
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestBadRoute(t *testing.T) {
	for _, args := range [][]string{
		{"-socket", "x"},
		{"-socket", "x", "-route", "/a,missing-file,text/plain"},
		{"-socket", "x", "-route", "no-slash,f,text/plain"},
		{"-route", "/a,f"},
	} {
		if err := run(context.Background(), args, io.Discard, nil); err == nil {
			t.Errorf("run(%q) = nil, want an error", args)
		}
	}
}
