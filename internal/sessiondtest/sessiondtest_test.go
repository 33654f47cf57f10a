package sessiondtest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/internal/sessiondtest"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sdt")
	if err != nil {
		panic(err)
	}
	binary, err = sessiondtest.Build(context.Background(), dir)
	if err != nil {
		os.RemoveAll(dir)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// TestStartServesAndStops: a daemon started on the demo credentials is
// ready (both have sessions the fake knows) when Start returns, and stops
// with exit 0, its socket removed.
func TestStartServesAndStops(t *testing.T) {
	fake := erplytest.New(clock.Real{})
	t.Cleanup(fake.Close)
	d, err := sessiondtest.Start(t.Context(), sessiondtest.Options{
		Binary: binary, Env: sessiondtest.DemoEnv(fake), Socket: filepath.Join(t.TempDir(), "s.sock"),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pos", "cashier"} {
		key, err := d.Client.Key(t.Context(), name)
		if err != nil || !fake.SessionValid(key) {
			t.Errorf("%s: key valid at the fake %v, err %v", name, err == nil && fake.SessionValid(key), err)
		}
	}
	if n := fake.Calls("verifyUser"); n != 1 {
		t.Errorf("verifyUser called %d times before ready, want 1", n)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(d.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Stop: %v", err)
	}
}

// TestStartReportsABadConfiguration: a daemon that exits at start makes
// Start fail at once with its log, rather than wait for readiness.
func TestStartReportsABadConfiguration(t *testing.T) {
	_, err := sessiondtest.Start(t.Context(), sessiondtest.Options{
		Binary: binary, Env: []string{"SESSIOND_CREDENTIALS=Bad-Name"}, Socket: filepath.Join(t.TempDir(), "s.sock"),
	})
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") || !strings.Contains(err.Error(), "SESSIOND_CREDENTIALS") {
		t.Fatalf("err = %v, want an early exit naming SESSIOND_CREDENTIALS", err)
	}
}
