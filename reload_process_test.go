package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/erply-sessiond/erply-sessiond/client"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

// writeEnvFile replaces path atomically with KEY="VALUE" lines, so that a
// reload never reads half a file.
func writeEnvFile(t *testing.T, path string, vars map[string]string) {
	t.Helper()
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q\n", k, vars[k])
	}
	if err := os.WriteFile(path+".tmp", []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// TestProcessReloadChangeAndAdd is issue 10's crash as an operator met it:
// the built daemon starts with SESSIOND_CREDENTIALS=pos from its env file;
// the file is rewritten to pos,pos_2 with pos's SESSION_LENGTH changed to
// 1800 and pos_2's settings, and SIGHUP is sent. The process stays up,
// pos logs in anew with the new length, and both credentials serve.
func TestProcessReloadChangeAndAdd(t *testing.T) {
	bin := daemonBinary(t)
	s := newProcSetup(t)
	code := s.env["SESSIOND_POS_CLIENT_CODE"]
	const clerk, clerkPW = "clerk@demo.example", "clerk-password-93f0a1"
	s.fake.AddAccount(code).AddUser(erplytest.User{Username: clerk, Password: clerkPW, UserID: 9, EmployeeID: 11})
	for k := range s.env {
		if strings.HasPrefix(k, "SESSIOND_CASHIER_") {
			delete(s.env, k)
		}
	}
	envFile := filepath.Join(s.dir, "env")
	writeEnvFile(t, envFile, map[string]string{"SESSIOND_CREDENTIALS": "pos"})
	s.env["SESSIOND_ENV_FILE"] = envFile

	cmd := exec.Command(bin)
	cmd.Env = s.environ()
	p := startProc(t, cmd)
	p.stderr.wait(t, `"message":"ready"`, 20*time.Second, p.done)
	c := client.New(s.socket)
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	posKey, err := c.Key(ctx, "pos")
	if err != nil {
		t.Fatal(err)
	}

	writeEnvFile(t, envFile, map[string]string{
		"SESSIOND_CREDENTIALS":        "pos,pos_2",
		"SESSIOND_POS_SESSION_LENGTH": "1800",
		"SESSIOND_POS_2_CLIENT_CODE":  code,
		"SESSIOND_POS_2_USERNAME":     clerk,
		"SESSIOND_POS_2_PASSWORD":     clerkPW,
	})
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.stderr.wait(t, `"message":"configuration reloaded"`, 20*time.Second, p.done)
	// Three logins in all: pos at start, pos again with 1800 s, pos_2.
	p.stderr.waitFunc(t, "pos's and pos_2's logins after the reload", 20*time.Second, p.done, func(logs string) bool {
		return strings.Count(logs, `"message":"logged in"`) >= 3
	})
	for _, name := range []string{"pos", "pos_2"} {
		sess, err := c.Session(ctx, name)
		if err != nil || !s.fake.SessionValid(sess.SessionKey) || sess.SessionKey == posKey {
			t.Fatalf("%s after the reload: %v (a live key other than pos's old one wanted)\n%s", name, err, p.stderr)
		}
		if name == "pos" && (sess.ExpiresIn > 1800 || sess.ExpiresIn < 1700) {
			t.Fatalf("pos expires in %d s after the reload, want its new length, 1800 s", sess.ExpiresIn)
		}
	}
	select {
	case <-p.done:
		t.Fatalf("the daemon exited after SIGHUP:\n%s", p.stderr)
	default:
	}
	if code := p.stop(syscall.SIGTERM); code != exitOK {
		t.Fatalf("exit %d after SIGTERM\n%s", code, p.stderr)
	}
}
