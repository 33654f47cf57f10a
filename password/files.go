package password

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// NextSuffix names the file a rotation writes the new password to before it
// calls Erply: PASSWORD_FILE.next.
const NextSuffix = ".next"

// Files serialises, per password file, everything that reads or rewrites
// it: a login reads it, a rotation rewrites it, and a login refused with
// 1051 finishes a rotation cut short. Because a login and a rotation of the
// same file never overlap, a login never meets the moment between Erply's
// password change and the rename. Its methods are safe for concurrent use;
// make one with NewFiles and share it between the pool's methods (Methods)
// and the Rotator.
type Files struct {
	log zerolog.Logger

	mu    sync.Mutex
	locks map[string]chan struct{} // by resolved file path; a full channel is a held lock
}

// NewFiles returns a Files that logs with log.
func NewFiles(log zerolog.Logger) *Files {
	return &Files{log: log.With().Str("component", "password").Logger(), locks: map[string]chan struct{}{}}
}

// lock takes path's lock, or gives up when ctx ends.
func (f *Files) lock(ctx context.Context, path string) (unlock func(), err error) {
	f.mu.Lock()
	ch := f.locks[path]
	if ch == nil {
		ch = make(chan struct{}, 1)
		f.locks[path] = ch
	}
	f.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Methods wraps the pool's MethodFor: a password credential whose password
// comes from a PASSWORD_FILE logs in under the file's lock, and when Erply
// refuses that password with 1051 while PASSWORD_FILE.next exists (a
// rotation cut between Erply's answer and the rename), it tries .next once
// and, if that works, completes the rename. Every other credential gets
// inner's method unchanged.
func (f *Files) Methods(inner func(config.Credential) pool.Method) func(config.Credential) pool.Method {
	return func(c config.Credential) pool.Method {
		m := inner(c)
		if m == nil || !isPasswordKind(c) || c.Password.File == "" {
			return m
		}
		return recovering{files: f, inner: m}
	}
}

func isPasswordKind(c config.Credential) bool {
	return c.Kind == config.KindPassword || c.Kind == ""
}

// recovering is a password credential's login method under its file's lock.
type recovering struct {
	files *Files
	inner pool.Method
}

// Login implements pool.Method.
func (m recovering) Login(ctx context.Context, cred config.Credential, sessions pool.Sessions) (pool.Grant, error) {
	path := resolve(cred.Password.File)
	unlock, err := m.files.lock(ctx, path)
	if err != nil {
		return pool.Grant{}, err
	}
	defer unlock()
	g, err := m.inner.Login(ctx, cred, sessions)
	next := path + NextSuffix
	if _, serr := os.Lstat(next); serr != nil {
		return g, err
	}
	log := m.files.log.With().Str("credential", cred.Name).Str("file", next).Logger()
	switch {
	case err == nil:
		// The current password works, so .next — left by a rotation cut
		// before Erply's answer, or one whose answer was lost and did not
		// take — is not the password.
		if rerr := os.Remove(next); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			log.Warn().Err(rerr).Msg("the current password works but the leftover new password file could not be removed")
		} else {
			log.Info().Msg("the current password works: removed the new password file left by a rotation that did not take")
		}
		return g, nil
	case upstream.CodeOf(err) != upstream.CodeLoginFailed:
		// Blocked, unreachable, …: that says nothing about which password
		// is right. .next stays for a later attempt.
		return g, err
	}
	alt := cred
	alt.Password = config.Secret{File: next, Var: cred.Password.Var}
	g2, err2 := m.inner.Login(ctx, alt, sessions)
	switch {
	case err2 == nil:
		if ferr := replace(next, path); ferr != nil {
			log.Error().Err(ferr).Msg("logged in with the password of a rotation cut short, but could not move it over PASSWORD_FILE")
		} else {
			log.Warn().Msg("completed a rotation cut short: Erply refused PASSWORD_FILE with 1051, PASSWORD_FILE.next worked and replaced it")
		}
		return g2, nil
	case upstream.CodeOf(err2) == upstream.CodeLoginFailed:
		// Refused too: .next is not the password either, and trying it
		// again would only bring the user nearer Erply's block.
		if rerr := os.Remove(next); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			log.Warn().Err(rerr).Msg("the new password file of a rotation cut short was refused too and could not be removed")
		} else {
			log.Warn().Msg("the new password file of a rotation cut short was refused too (1051): removed it")
		}
	default:
		log.Warn().Err(err2).Msg("could not try the new password file of a rotation cut short; it is kept for the next login")
	}
	return g, err
}

// resolve returns file with its symbolic links resolved, so that a rotation
// rewrites the file a link points to and the link stays; file itself when
// it cannot be resolved.
func resolve(file string) string {
	if p, err := filepath.EvalSymlinks(file); err == nil {
		return p
	}
	return filepath.Clean(file)
}

// checkWritable returns why the password file at path (resolved) or its
// directory cannot be rewritten, or nil. The kernel's own test (access(2)
// with the effective ids) catches missing permissions, ACLs and read-only
// mounts; because it lets root write anything on a writable mount, a file
// or directory with no write bit for anyone also counts as read-only: an
// operator who made it so meant it, whoever the daemon runs as.
func checkWritable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("PASSWORD_FILE %s: %w", path, unwrapPath(err))
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("PASSWORD_FILE %s is not a regular file", path)
	}
	if err := writable(path, fi, unix.W_OK); err != nil {
		return fmt.Errorf("PASSWORD_FILE %s is not writable: %w", path, err)
	}
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("directory %s of PASSWORD_FILE: %w", dir, unwrapPath(err))
	}
	if err := writable(dir, di, unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("directory %s of PASSWORD_FILE is not writable (the new password is written beside the file, then renamed over it): %w", dir, err)
	}
	return nil
}

func writable(path string, fi fs.FileInfo, mode uint32) error {
	if fi.Mode().Perm()&0o222 == 0 {
		return fmt.Errorf("mode %04o has no write permission", fi.Mode().Perm())
	}
	if err := unix.Faccessat(unix.AT_FDCWD, path, mode, unix.AT_EACCESS); err != nil {
		return err
	}
	return nil
}

// unwrapPath drops *fs.PathError's repetition of the path.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// writeNext writes pw to next (which must not exist) with mode 0600 and
// makes it durable, file and directory entry both, before Erply hears of
// it: after a crash the new password must still be there.
func writeNext(next, pw string) (err error) {
	f, err := os.OpenFile(next, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(next)
		}
	}()
	// The umask may have taken bits away, never added them; make it exact.
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if _, err = f.WriteString(pw + "\n"); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return syncDir(filepath.Dir(next))
}

// replace renames next over path after giving next path's mode and, where
// the daemon may, its owner and group, then makes the rename durable.
func replace(next, path string) error {
	if fi, err := os.Stat(path); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			// Only root may give a file away; anyone may keep their own.
			_ = os.Lchown(next, int(st.Uid), int(st.Gid))
		}
		if err := os.Chmod(next, fi.Mode().Perm()); err != nil {
			return err
		}
	}
	if err := os.Rename(next, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
