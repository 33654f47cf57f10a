package main

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// goleak.Cleanup replaces os.Exit: exit after removing the binary the
	// process tests built.
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) { removeBuiltBinary(); os.Exit(code) }))
}
