package localapi_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/localapi"
)

// BenchmarkKeyRoute measures GET /v1/sessions/{name}/key over a real Unix
// socket with a keep-alive client; compare with BenchmarkBareKey.
func BenchmarkKeyRoute(b *testing.B) {
	fake := newFake(snapshot("pos", "0123456789abcdef0123456789abcdef01234567", time.Now().Add(24*time.Hour), 1))
	srv := localapi.New(localapi.Options{
		Sessions: fake,
		Clock:    clock.Real{},
		Logger:   zerolog.New(io.Discard).Level(zerolog.InfoLevel),
	})
	sock := filepath.Join(benchDir(b), "s.sock")
	l, err := localapi.ListenUnix(sock, 0o660)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l, false) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			b.Error(err)
		}
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	runKeyClient(b, sock, "http://sessiond/v1/sessions/pos/key")
}

// BenchmarkBareKey is the floor: a bare net/http server on a Unix socket
// answering the same bytes with the same Content-Type.
func BenchmarkBareKey(b *testing.B) {
	key := []byte("0123456789abcdef0123456789abcdef01234567\n")
	ct := []string{"text/plain; charset=utf-8"}
	sock := filepath.Join(benchDir(b), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = ct
		_, _ = w.Write(key)
	})}
	done := make(chan error, 1)
	go func() { done <- hs.Serve(l) }()
	defer func() {
		hs.Close()
		<-done
	}()
	runKeyClient(b, sock, "http://bare/key")
}

func benchDir(b *testing.B) string {
	b.Helper()
	dir, err := os.MkdirTemp("", "sd")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func runKeyClient(b *testing.B, sock, url string) {
	client := unixClient(sock)
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 256)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		res, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.ReadFull(res.Body, buf[:41])
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || n != 41 {
			b.Fatalf("status %d, %d bytes", res.StatusCode, n)
		}
	}
}
