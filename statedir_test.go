package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// TestServeStateDirRefusals runs serve in-process, as main does, on state
// directories it must refuse: one others can write is an invalid
// configuration (exit 78, naming the variable that named it); one another
// daemon holds is a failure (exit 1: systemd retries, and the other may be
// gone by then) that says so. Neither listens on its socket or logs in.
func TestServeStateDirRefusals(t *testing.T) {
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	fake := erplytest.New(clock.Real{})
	t.Cleanup(fake.Close)
	code, user, pw, _ := fake.SeedDemo()
	base := []string{
		"SESSIOND_CREDENTIALS=pos", "SESSIOND_API_URL=" + fake.APIURL(),
		"SESSIOND_POS_CLIENT_CODE=" + code, "SESSIOND_POS_USERNAME=" + user, "SESSIOND_POS_PASSWORD=" + pw,
	}
	mkdir := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // not subject to the umask
			t.Fatal(err)
		}
		return p
	}
	held := mkdir("held", 0o700)

	// The daemon that holds "held".
	ctx, cancel := context.WithCancel(context.Background())
	logs := newLogWatch()
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		_ = runEnv(ctx, []string{"serve"}, append(slices.Clone(base), "SESSIOND_SOCKET="+filepath.Join(dir, "a.sock"), "SESSIOND_STATE_DIR="+held), nil, &bytes.Buffer{}, logs)
	}()
	t.Cleanup(func() { cancel(); <-exited })
	logs.wait(t, `"message":"ready"`, 20*time.Second, exited)

	for _, tc := range []struct {
		name    string
		env     string
		want    int
		stderrs []string
	}{
		{"world-writable SESSIOND_STATE_DIR", "SESSIOND_STATE_DIR=" + mkdir("open", 0o777), exitConfig,
			[]string{"config: SESSIOND_STATE_DIR:", "writable by its group or by others", "chmod 0700"}},
		{"group-writable STATE_DIRECTORY (systemd's)", "STATE_DIRECTORY=" + mkdir("group", 0o770), exitConfig,
			[]string{"config: STATE_DIRECTORY:", "writable by its group or by others"}},
		{"held by another daemon", "SESSIOND_STATE_DIR=" + held, exitFailure,
			[]string{"SESSIOND_STATE_DIR:", "held by another erply-sessiond", "each daemon needs a state directory of its own"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket := filepath.Join(dir, "b.sock")
			fake.ResetCounters()
			var stderr bytes.Buffer
			got, msg := exitStatus(runEnv(t.Context(), []string{"serve"}, append(slices.Clone(base), "SESSIOND_SOCKET="+socket, tc.env), nil, &bytes.Buffer{}, &stderr))
			if msg != nil {
				stderr.WriteString(msg.Error())
			}
			if got != tc.want {
				t.Fatalf("exit %d, want %d\n%s", got, tc.want, &stderr)
			}
			for _, s := range tc.stderrs {
				if !strings.Contains(stderr.String(), s) {
					t.Errorf("the message does not say %q:\n%s", s, &stderr)
				}
			}
			if _, err := os.Lstat(socket); err == nil {
				t.Error("the refused daemon made its socket")
			}
			if n := fake.TotalCalls(); n != 0 {
				t.Errorf("the refused daemon made %d upstream calls", n)
			}
		})
	}
}
