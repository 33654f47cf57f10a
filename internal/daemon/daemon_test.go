package daemon_test

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		fmt.Fprintln(os.Stderr, redisMissing)
	}
	goleak.VerifyTestMain(m)
}

func TestDaemonServesAndStops(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	k := d.key("pos")
	if !d.fake.SessionValid(k) {
		t.Fatal("served key is not valid at the fake")
	}
	if err := d.stop(); err != nil {
		t.Fatalf("serve returned %v after a requested stop, want nil (exit 0)", err)
	}
	if _, err := os.Lstat(d.socket); !os.IsNotExist(err) {
		t.Fatalf("socket still there after shutdown: %v", err)
	}
}
