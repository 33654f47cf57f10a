package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// echoServer echoes every connection's bytes back until EOF.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.Copy(c, c)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

// TestRelayDelaysEachWay: a round trip through the relay takes at least
// the connection's round trip plus one delay each way, and the bytes
// arrive whole and in order.
func TestRelayDelaysEachWay(t *testing.T) {
	const delay = 15 * time.Millisecond
	r, err := newRelay(echoServer(t), delay)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	start := time.Now()
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 8<<10) // 128 KiB: several chunks
	go func() { _, _ = c.Write(msg); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the relay: %d bytes, %v; want the %d sent", len(got), err, len(msg))
	}
	if took := time.Since(start); took < 4*delay {
		t.Errorf("round trip took %v, want at least %v (handshake round trip + one delay each way)", took, 4*delay)
	}

	// Delay 0: no hold at all beyond the copy.
	r.SetDelay(0)
	start = time.Now()
	c, err = net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("x"))
	c.(*net.TCPConn).CloseWrite()
	got, _ = io.ReadAll(c)
	c.Close()
	if string(got) != "x" || time.Since(start) >= delay {
		t.Errorf("with delay 0: %q after %v", got, time.Since(start))
	}
}

// TestRelayCloseEndsOpenConnections: Close returns with a client still
// connected (goleak checks its goroutines ended).
func TestRelayCloseEndsOpenConnections(t *testing.T) {
	r, err := newRelay(echoServer(t), time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if _, err := c.Read(buf); err == nil {
		t.Error("the client's connection is still open after Close")
	}
}

// TestTLSErplyCountsHandshakes: each new client connection is one
// handshake; requests on a kept-alive connection add none; the written
// certificate is what a client trusts for 127.0.0.1.
func TestTLSErplyCountsHandshakes(t *testing.T) {
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	e, err := startTLSErply(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }), caFile)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	b, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	get := func(hc *http.Client) {
		t.Helper()
		resp, err := hc.Get("https://" + e.Addr() + "/")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	newClient := func() *http.Client {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		t.Cleanup(hc.CloseIdleConnections)
		return hc
	}
	a := newClient()
	for range 3 {
		get(a)
	}
	if n := e.Handshakes(); n != 1 {
		t.Errorf("%d handshakes for 3 requests on one kept-alive connection, want 1", n)
	}
	get(newClient())
	if n := e.Handshakes(); n != 2 {
		t.Errorf("%d handshakes after a second client, want 2", n)
	}
}

func TestMedianAndChecks(t *testing.T) {
	if m := median([]time.Duration{5, 1, 3}); m != 3 {
		t.Errorf("median of 5,1,3 = %v", m)
	}
	if m := median([]time.Duration{4, 1, 3, 2}); m != 2 {
		t.Errorf("median of 4,1,3,2 = %v (the mean of the middle two, truncated)", m)
	}
	if checkOK([]byte(`{"status":{"responseStatus":"ok","errorCode":0}}`)) != nil ||
		checkOK([]byte(`{"status":{"responseStatus":"error","errorCode":1054}}`)) == nil || checkOK([]byte(`<html>`)) == nil {
		t.Error("checkOK does not tell an ok reply from an error or garbage")
	}
	if err := runJob(context.Background(), "bogus", os.Getenv); err == nil {
		t.Error("an unknown job kind ran")
	}
}
