package daemon

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// TestLogLevelChangesAtRuntime: the level a reload sets applies to the
// next event, in both directions, and drops exactly the events below it.
func TestLogLevelChangesAtRuntime(t *testing.T) {
	var buf bytes.Buffer
	lw := newLevelWriter(&buf, "json")
	lw.setLevel("info")
	log := zerolog.New(lw).Sample(lw).With().Str("component", "x").Logger()
	log.Debug().Msg("debug at info")
	log.Info().Msg("info at info")
	lw.setLevel("debug") // as a reload with SESSIOND_LOG_LEVEL=debug does
	log.Debug().Msg("debug at debug")
	log.Info().Msg("info at debug")
	lw.setLevel("warn")
	log.Info().Msg("info at warn")
	log.Warn().Msg("warn at warn")
	lw.setLevel("") // unset: the default, info
	log.Debug().Msg("debug at default")
	log.Info().Msg("info at default")

	var got []string
	for _, line := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		var ev struct {
			Level, Message, Component string
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if ev.Component != "x" {
			t.Fatalf("log line %q lost the logger's fields", line)
		}
		got = append(got, ev.Level+": "+ev.Message)
	}
	want := []string{"info: info at info", "debug: debug at debug", "info: info at debug", "warn: warn at warn", "info: info at default"}
	if !slices.Equal(got, want) {
		t.Fatalf("logged\n  %q\nwant\n  %q", got, want)
	}
}
