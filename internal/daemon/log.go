package daemon

import (
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// levelWriter is the log sink whose level a reload can change.
type levelWriter struct {
	out   io.Writer
	mu    sync.RWMutex
	level zerolog.Level
}

func newLevelWriter(out io.Writer, format string) *levelWriter {
	if format == "console" {
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.RFC3339}
	}
	return &levelWriter{out: out, level: zerolog.InfoLevel}
}

// setLevel applies SESSIOND_LOG_LEVEL; an empty or unknown level is info
// (config has rejected unknown ones already).
func (w *levelWriter) setLevel(s string) {
	l, err := zerolog.ParseLevel(s)
	if err != nil || s == "" {
		l = zerolog.InfoLevel
	}
	w.mu.Lock()
	w.level = l
	w.mu.Unlock()
}

func (w *levelWriter) Write(p []byte) (int, error) { return w.out.Write(p) }

// Sample reports whether events at l are logged at the current level.
func (w *levelWriter) Sample(l zerolog.Level) bool {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return l >= w.level
}

// WriteLevel drops events below the current level.
func (w *levelWriter) WriteLevel(l zerolog.Level, p []byte) (int, error) {
	w.mu.RLock()
	min := w.level
	w.mu.RUnlock()
	if l < min {
		return len(p), nil
	}
	return w.out.Write(p)
}
