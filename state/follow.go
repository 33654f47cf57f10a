package state

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
)

// tempPattern names the temporary files a write goes through.
const tempPattern = FileName + ".tmp-*"

// SetCredentials tells the Store the configured credentials, whose
// fingerprints bind the saved sessions. Restore calls it; the daemon calls
// it again after each reload, right after pool.Update. A credential whose
// identity changed is not saved again until it holds a session made with
// the new identity: the session it holds at this moment may still be one
// of the old identity.
func (s *Store) SetCredentials(creds []config.Credential) {
	byName := make(map[string]config.Credential, len(creds))
	for _, c := range creds {
		byName[c.Name] = c
	}
	next := make(map[string]credInfo, len(creds))
	for _, c := range creds {
		next[c.Name] = credInfo{fingerprint: Fingerprint(c, byName)}
	}
	s.mu.Lock()
	p := s.follow
	prev := s.creds
	s.mu.Unlock()
	// The pool is asked with s.mu released: s.mu is taken inside the pool's
	// publish (the subscriber), so it is never held while calling the pool.
	current := map[string]string{}
	if p != nil {
		for _, snap := range p.Snapshots() {
			if snap.Session != nil {
				current[snap.Name] = snap.Session.SessionKey
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, old := range prev {
		nw, ok := next[name]
		if ok && nw.fingerprint == old.fingerprint {
			continue
		}
		delete(s.hold, name)
		if ok && current[name] != "" {
			s.hold[name] = current[name]
		}
		if t, ok := s.rechecks[name]; ok {
			if t.Stop() {
				s.wg.Done()
			}
			delete(s.rechecks, name)
		}
	}
	s.creds = next
	s.changedLocked()
}

// Follow writes the pool's sessions to the state file after every change
// (pool.Subscribe), at most once per MinInterval, and at once when the
// returned stop (or Close) is called; a credential the pool no longer has
// drops out of the file. Call it once, after Restore. stop is safe to call
// more than once.
func (s *Store) Follow(p *pool.Pool) (stop func()) {
	s.mu.Lock()
	if s.follow != nil || s.closed {
		s.mu.Unlock()
		return func() {}
	}
	s.follow, s.following = p, true
	s.mu.Unlock()
	unsub := p.Subscribe(func(*pool.Snapshot) { s.changed() })
	s.mu.Lock()
	s.unfollow = unsub
	s.changedLocked() // the pool as Restore left it
	s.mu.Unlock()
	return func() { _ = s.stopFollowing() }
}

// stopFollowing unsubscribes, cancels the pending write and writes the last
// change now.
func (s *Store) stopFollowing() error {
	s.mu.Lock()
	unsub := s.unfollow
	s.unfollow, s.following = nil, false
	if s.pending != nil && s.pending.Stop() {
		s.wg.Done()
	}
	s.pending = nil
	dirty := s.dirty && s.follow != nil
	s.mu.Unlock()
	if unsub != nil {
		unsub()
	}
	if !dirty {
		return nil
	}
	return s.write()
}

// changed is the pool's subscriber: it must be quick, so it only schedules
// the write.
func (s *Store) changed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.changedLocked()
}

// changedLocked marks the file out of date and schedules a write, no sooner
// than MinInterval after the last one; a write already scheduled will pick
// this change up.
func (s *Store) changedLocked() {
	if !s.following {
		return
	}
	s.dirty = true
	if s.pending != nil {
		return
	}
	wait := s.lastWrite.Add(s.opts.MinInterval).Sub(s.clk.Now())
	if wait < 0 {
		wait = 0
	}
	s.wg.Add(1)
	s.pending = s.clk.AfterFunc(wait, s.fire)
}

func (s *Store) fire() {
	defer s.wg.Done()
	s.mu.Lock()
	s.pending = nil
	s.mu.Unlock()
	_ = s.write()
}

// write saves the pool's current sessions, unless nothing saved changed
// since the last write. A failed write is logged (once until one succeeds)
// and tried again after MinInterval.
func (s *Store) write() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	p := s.follow
	creds, hold := s.creds, maps.Clone(s.hold) // creds is replaced whole, hold edited in place
	s.dirty = false
	s.lastWrite = s.clk.Now()
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	now := s.clk.Now()
	recs := map[string]*record{}
	var release []string
	for _, snap := range p.Snapshots() {
		ci, ok := creds[snap.Name]
		if !ok || snap.Removed || !snap.Valid(now, p.MarginOf(snap)) {
			continue
		}
		if k, held := hold[snap.Name]; held {
			if k == snap.Session.SessionKey {
				continue
			}
			release = append(release, snap.Name)
		}
		recs[snap.Name] = recordOf(snap, ci.fingerprint)
	}
	data, err := encode(recs)
	if err == nil {
		s.mu.Lock()
		same := bytes.Equal(data, s.written)
		s.mu.Unlock()
		if same {
			return nil
		}
		err = writeAtomic(s.dirFile, s.path, data)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range release {
		if s.hold[n] == hold[n] {
			delete(s.hold, n)
		}
	}
	if err != nil {
		s.m.writes.WithLabelValues("error").Inc()
		if !s.failing {
			s.log.Error().Err(err).Str("file", s.path).Msg("cannot save sessions to the state file; retrying")
		}
		s.failing = true
		s.changedLocked()
		return err
	}
	s.m.writes.WithLabelValues("ok").Inc()
	if s.failing {
		s.log.Info().Str("file", s.path).Msg("state file written again")
	}
	s.failing = false
	s.written = data
	s.log.Debug().Int("sessions", len(recs)).Msg("state file written")
	return nil
}

// writeAtomic replaces path with data so that a reader (or a crash) sees
// the old file or the new one, never a part: a temporary file in the same
// directory, mode 0600, fsynced, renamed over path, then the directory
// fsynced so the rename itself survives a power cut.
func writeAtomic(dir *os.File, path string, data []byte) (err error) {
	f, err := os.CreateTemp(dir.Name(), tempPattern)
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err == nil {
		if _, err = f.Write(data); err == nil {
			err = f.Sync()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	if err := dir.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("fsync the state directory: %w", err)
	}
	return nil
}
