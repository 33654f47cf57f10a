package sink_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/sink"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func snap(name, key string) *pool.Snapshot {
	s := &pool.Snapshot{Name: name}
	if key != "" {
		s.Session = &upstream.Session{SessionKey: key}
	}
	return s
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestApply(t *testing.T) {
	dir := t.TempDir()
	posFile := filepath.Join(dir, "pos.key")
	var logs bytes.Buffer
	w := sink.New(sink.Options{Logger: zerolog.New(&logs).Level(zerolog.DebugLevel)})
	t.Cleanup(w.Close)
	w.SetTargets(map[string]sink.Target{"pos": {Path: posFile, Mode: 0o600}})

	w.Apply(snap("pos", "key-one-0123456789"))
	if got := read(t, posFile); got != "key-one-0123456789\n" {
		t.Fatalf("sink file = %q", got)
	}
	if fi, _ := os.Stat(posFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", fi.Mode().Perm())
	}
	// No session, a removed credential, or one without a target: no change.
	w.Apply(snap("pos", ""))
	removed := snap("pos", "key-two-0123456789")
	removed.Removed = true
	w.Apply(removed)
	w.Apply(snap("other", "key-three-0123456789"))
	if got := read(t, posFile); got != "key-one-0123456789\n" {
		t.Fatalf("sink file changed to %q", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("%d files in the directory, want only the sink (no temporaries)", len(ents))
	}
	w.Apply(snap("pos", "key-four-0123456789"))
	if got := read(t, posFile); got != "key-four-0123456789\n" {
		t.Fatalf("sink file = %q after a new key", got)
	}
	// A target that cannot be written is logged, by fingerprint only.
	w.SetTargets(map[string]sink.Target{"pos": {Path: filepath.Join(dir, "missing", "pos.key")}})
	w.Apply(snap("pos", "key-five-0123456789"))
	if !strings.Contains(logs.String(), "cannot write sink file") || strings.Contains(logs.String(), "key-") {
		t.Fatalf("logs:\n%s", logs.String())
	}
}

func TestWriteAtomicDefaultMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k")
	if err := sink.WriteAtomic(p, []byte("x\n"), 0); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode = %v, want 0640", fi.Mode().Perm())
	}
}
