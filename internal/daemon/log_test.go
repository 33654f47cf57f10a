package daemon

import (
	"bytes"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestLogLevelChangesAtRuntime(t *testing.T) {
	var buf bytes.Buffer
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
