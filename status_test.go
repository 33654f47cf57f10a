package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/client"
)

func TestWriteStatusTable(t *testing.T) {
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { v := now.Add(d); return &v }
	creds := []client.Credential{
		{Name: "pos", Kind: "password", State: "ok", ExpiresAt: at(59 * time.Minute), RefreshAt: at(40 * time.Minute), Logins: 3},
		{Name: "cashier", Kind: "pin", State: "failing", ExpiresAt: at(90 * time.Second), RefreshAt: at(4 * time.Second), Logins: 1,
			LastError: "erply switchUser: error 1051 (wrong PIN)\nsecond line"},
		{Name: "office", Kind: "password", State: "expired", ExpiresAt: at(-5 * time.Second), PasswordExpired: true,
			LastError: strings.Repeat("x", 100)},
		{Name: "new", Kind: "identity", State: "starting"},
	}
	var b bytes.Buffer
	writeStatus(&b, creds, now)
	want := `CREDENTIAL  KIND      STATE     EXPIRES IN  NEXT REFRESH  LOGINS  PASSWORD  LAST ERROR
pos         password  ok        59m0s       40m0s         3       ok        -
cashier     pin       failing   1m30s       4s            1       -         erply switchUser: error 1051 (wrong PIN)
office      password  expired   -5s         -             0       expired   ` + strings.Repeat("x", 79) + `…
new         identity  starting  -           -             0       -         -
`
	if b.String() != want {
		t.Fatalf("table:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	creds[0].Fleet, creds[1].Fleet, creds[1].FleetError = "shared", "local", "cannot decrypt the shared record"
	writeStatus(&b, creds[:2], now)
	if !strings.Contains(b.String(), "FLEET") || !strings.Contains(b.String(), "local (cannot decrypt the shared record)") {
		t.Fatalf("fleet column missing:\n%s", b.String())
	}
}

// The status command against the real binary running its demo: a table and
// exit 0 while every credential is ok; JSON with -json; exit 1 when a
// credential cannot log in; exit 3 with no daemon.
func TestStatusCommandAgainstTheDaemon(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "erply-sessiond")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "s.sock")
	ctx, cancel := context.WithCancel(context.Background())
	demo := exec.CommandContext(ctx, bin, "demo", "-socket", sock)
	demo.Env = []string{"SESSIOND_LOG_LEVEL=warn"}
	stdout, err := demo.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = demo.Wait() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "demo is ready") {
				close(ready)
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("the demo never said it was ready")
	}

	out, code := runStatus(t, bin, "-socket", sock)
	if code != 0 || !strings.Contains(out, "CREDENTIAL") || !regexpLine(out, "pos", "password", "ok") || !regexpLine(out, "cashier", "pin", "ok") {
		t.Fatalf("status exited %d:\n%s", code, out)
	}
	out, code = runStatus(t, bin, "-socket", sock, "-json")
	var creds []client.Credential
	if code != 0 || json.Unmarshal([]byte(out), &creds) != nil || len(creds) != 2 || creds[0].Logins != 1 || creds[0].RefreshAt == nil {
		t.Fatalf("status -json exited %d:\n%s", code, out)
	}

	// A daemon whose only credential cannot reach Erply: not ok, exit 1.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := closed.Addr().String()
	closed.Close()
	sock2 := filepath.Join(dir, "b.sock")
	bad := exec.CommandContext(ctx, bin)
	bad.Env = []string{"SESSIOND_SOCKET=" + sock2, "SESSIOND_CREDENTIALS=pos", "SESSIOND_POS_CLIENT_CODE=1",
		"SESSIOND_POS_USERNAME=u", "SESSIOND_POS_PASSWORD=p", "SESSIOND_API_URL=http://" + addr + "/{clientCode}/api/", "SESSIOND_LOG_LEVEL=info"}
	logs, err := bad.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bad.Process.Signal(os.Interrupt); _ = bad.Wait() })
	badReady := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			if strings.Contains(sc.Text(), `"message":"ready"`) {
				close(badReady)
				break
			}
		}
		_, _ = io.Copy(io.Discard, logs)
	}()
	select {
	case <-badReady:
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon with an unreachable Erply never finished its first login round")
	}
	out, code = runStatus(t, bin, "-socket", sock2)
	if code != 1 || !regexpLine(out, "pos", "password") {
		t.Fatalf("status with a failing credential exited %d, want 1:\n%s", code, out)
	}

	if _, code := runStatus(t, bin, "-socket", filepath.Join(dir, "nobody.sock")); code != 3 {
		t.Fatalf("status with no daemon exited %d, want 3", code)
	}
}

func runStatus(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"status"}, args...)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// regexpLine reports whether some line of out starts with the given words
// in order, separated by spaces.
func regexpLine(out string, words ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(l)[:min(len(words), len(strings.Fields(l)))], " ") == strings.Join(words, " ") {
			return true
		}
	}
	return false
}
