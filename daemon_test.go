package main

import (
	"os"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

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

func TestLogLevelChangesAtRuntime(t *testing.T) {
	var buf syncBuffer
	lw := newLevelWriter(&buf, "json")
	lw.setLevel("info")
	log := zerolog.New(lw).Sample(lw).With().Str("component", "x").Logger()
	log.Debug().Msg("hidden")
	log.Info().Msg("shown")
	lw.setLevel("debug") // as a reload with SESSIOND_LOG_LEVEL=debug does
	log.Debug().Msg("now shown")
	got := buf.String()
	if strings.Contains(got, "hidden") || !strings.Contains(got, "shown") || !strings.Contains(got, "now shown") {
		t.Fatalf("log output:\n%s", got)
	}
}
