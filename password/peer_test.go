package password_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/config"
)

// TestRotateForbiddenForOtherUID asks for a rotation from a real other uid
// (curl under setpriv as nobody, 65534): 403 naming the uid, and Erply
// hears nothing. The daemon's own uid (the test's) may rotate.
func TestRotateForbiddenForOtherUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run curl as another uid (setpriv); localapi's injected peer-credential tests cover non-root runs")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not installed (Debian util-linux)")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	e := newEnv(t)
	d := e.start(daemonOptions{creds: []config.Credential{e.password("pos")}, api: true, socket: 0o666})
	// nobody must be able to reach the socket: its directory is 0700.
	if err := os.Chmod(filepath.Dir(d.sock), 0o755); err != nil {
		t.Fatal(err)
	}
	d.open()
	calls := e.fake.TotalCalls()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
		curl, "-sS", "-X", "POST", "-w", "\n%{http_code}", "--unix-socket", d.sock,
		"http://localhost/v1/sessions/pos/rotate-password").Output()
	if err != nil {
		t.Fatalf("curl as uid 65534: %v", err)
	}
	s := string(out)
	i := strings.LastIndexByte(s, '\n')
	code, _ := strconv.Atoi(s[i+1:])
	eb := decode[errorBody](t, s[:i])
	if code != 403 || eb.Error != "forbidden" || !strings.Contains(eb.Message, "uid 65534 may not rotate passwords") {
		t.Fatalf("uid 65534: %d %s, want 403 naming the uid", code, s[:i])
	}
	if n := e.fake.TotalCalls() - calls; n != 0 || e.nextExists() || e.fileContent() != e.pw {
		t.Fatalf("a forbidden caller caused %d calls to Erply or touched the file", n)
	}
	// The daemon's own user (root here) may.
	if code, body := d.do("POST", "/v1/sessions/pos/rotate-password"); code != 200 {
		t.Fatalf("rotate as the daemon's uid = %d %s", code, body)
	}
}
