// Package envwatch notices when the env file changes — written in place, replaced by a rename, or swapped by kubelet's ..data symlink — and reports each settled change once.
package envwatch

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/erply-sessiond/erply-sessiond/clock"
)

// DefaultInterval is how often the file is looked at. A change is reported
// once the content has stayed the same for one more look, so within two
// intervals of the last write: well inside the 10 s the contract promises.
const DefaultInterval = 2 * time.Second

// maxSize bounds what is read of the file: an env file is small.
const maxSize = 1 << 20

// Watcher polls one file by its path. Polling the content (not inotify)
// follows every way the file can change, including kubelet's update of a
// mounted ConfigMap, which swaps a symlink two levels up and never writes
// the file itself; it needs no file descriptor per watched directory and
// works on every filesystem.
type Watcher struct {
	// Path is the file to watch; symlinks are followed at every look.
	Path string
	// Interval between looks; DefaultInterval when zero.
	Interval time.Duration
	// Clock drives the looks; clock.Real when nil.
	Clock clock.Clock
	// Changed is called (from Run's goroutine) once per settled change.
	Changed func()
	// Failed, when set, is told when the file cannot be read (once per
	// new error, not every look); the watch goes on.
	Failed func(error)

	primed  bool
	base    [sha256.Size]byte
	baseErr error
}

// Prime takes the baseline now instead of when Run starts, so that a change
// made between the two is reported too: call it when the configuration is
// read from the file, before Run (not concurrently with it).
func (w *Watcher) Prime() {
	w.base, w.baseErr = w.look()
	w.primed = true
}

// Run watches until ctx ends. The content at the start (or at Prime) is the
// baseline: only later changes are reported. A file that disappears is a
// change when it comes back different.
func (w *Watcher) Run(ctx context.Context) error {
	clk := w.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	every := w.Interval
	if every <= 0 {
		every = DefaultInterval
	}
	applied, lastErr := w.base, w.baseErr
	if !w.primed {
		applied, lastErr = w.look()
	}
	seen, pending := applied, false
	for {
		t := clk.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
		sum, err := w.look()
		if err != nil {
			if w.Failed != nil && (lastErr == nil || lastErr.Error() != err.Error()) {
				w.Failed(err)
			}
			lastErr = err
			continue
		}
		lastErr = nil
		switch {
		case sum != seen:
			// Still being written (or just swapped): wait for it to settle.
			seen, pending = sum, true
		case pending:
			pending = false
			if sum != applied {
				applied = sum
				w.Changed()
			}
		}
	}
}

// look returns a digest of the file's content.
func (w *Watcher) look() ([sha256.Size]byte, error) {
	f, err := os.Open(w.Path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return [sha256.Size]byte{}, nil // absent is a content of its own
		}
		return [sha256.Size]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, maxSize)); err != nil {
		return [sha256.Size]byte{}, err
	}
	var sum [sha256.Size]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
