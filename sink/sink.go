// Package sink writes each credential's current session key to a file, atomically, for consumers that only read files.
package sink

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/pool"
)

// Target is where one credential's key goes.
type Target struct {
	Path string
	Mode os.FileMode // default 0640
}

// Writer rewrites sink files on every session change. It is safe for
// concurrent use; make one with New and feed it snapshots with Apply (for
// instance from pool.Subscribe).
type Writer struct {
	log zerolog.Logger

	mu      sync.Mutex
	targets map[string]Target // by credential name
	written map[string]string // credential name → fingerprint last written
}

// New returns a Writer with no targets.
func New(log zerolog.Logger) *Writer {
	return &Writer{log: log.With().Str("component", "sink").Logger(), targets: map[string]Target{}, written: map[string]string{}}
}

// SetTargets replaces the set of sink files (at start and on reload).
// Files of credentials no longer listed are left in place.
func (w *Writer) SetTargets(t map[string]Target) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.targets = t
}

// Apply writes s's key to its credential's sink file if it has one and the
// key differs from the one last written. A snapshot without a session, or a
// removed credential, leaves the file as it is: the daemon never writes a
// key it would not serve, and a removed credential's file stays.
func (w *Writer) Apply(s *pool.Snapshot) {
	if s.Removed || s.Session == nil || s.Session.SessionKey == "" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.targets[s.Name]
	if !ok || t.Path == "" {
		return
	}
	fp := pool.Fingerprint(s.Session.SessionKey) + t.Path
	if w.written[s.Name] == fp {
		return
	}
	if err := WriteAtomic(t.Path, []byte(s.Session.SessionKey+"\n"), t.Mode); err != nil {
		w.log.Error().Err(err).Str("credential", s.Name).Str("file", t.Path).Msg("cannot write sink file")
		return
	}
	w.written[s.Name] = fp
	w.log.Debug().Str("credential", s.Name).Str("file", t.Path).Str("key", pool.Fingerprint(s.Session.SessionKey)).Msg("sink file written")
}

// WriteAtomic writes data to path through a temporary file in the same
// directory and a rename, so a reader sees the old content or the new, never
// a part. The file gets mode (default 0640) and is fsynced before the rename.
func WriteAtomic(path string, data []byte, mode os.FileMode) (err error) {
	if mode == 0 {
		mode = 0o640
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("sink %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(mode); err == nil {
		if _, err = f.Write(data); err == nil {
			err = f.Sync()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sink %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("sink %s: %w", path, err)
	}
	return nil
}
