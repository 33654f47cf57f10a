package sdnotify

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The socket-activation tests re-execute this binary as the activated
	// process; see activationChild.
	if os.Getenv(childEnv) != "" {
		os.Exit(activationChild())
	}
	goleak.VerifyTestMain(m)
}
