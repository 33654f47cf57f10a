package fleet_test

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/fleet"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		fmt.Fprintln(os.Stderr, "WARNING: redis-server is not installed: fleet's tests against a real Redis (SIGKILL, SIGSTOP, MONITOR) are SKIPPED; apt-get install redis-server")
	}
	fleet.SetRedisLogger(zerolog.Nop())
	goleak.VerifyTestMain(m)
}
