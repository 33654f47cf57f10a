// Package state owns the sessions that outlive the process: the state file that saves them and the restore that serves them again after a restart.
//
// store.go holds the state directory (its checks, its lock, loading the
// file); follow.go writes the pool's sessions to it; restore.go brings them
// back at start; format.go is the file format.
package state

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/pool"
)

// EnvStateDir is the variable naming the state directory; EnvSystemdStateDir
// is the one systemd sets from the unit's StateDirectory=.
const (
	EnvStateDir        = "SESSIOND_STATE_DIR"
	EnvSystemdStateDir = "STATE_DIRECTORY"
)

// lockName is the lock file in the state directory.
const lockName = "state.lock"

// Errors Open returns, for callers that tell them apart (errors.Is).
var (
	// ErrUnsafeDir: the directory can be written by someone else than the
	// daemon's user, who could plant or swap saved sessions.
	ErrUnsafeDir = errors.New("unsafe state directory")
	// ErrLocked: another erply-sessiond holds the directory.
	ErrLocked = errors.New("state directory in use")
)

// ResolveDir returns the state directory and the variable that named it:
// SESSIOND_STATE_DIR, else the first directory of systemd's
// $STATE_DIRECTORY; "" when neither is set (the state file is off).
// lookup reads a variable (os.Getenv, or the daemon's merged environment).
func ResolveDir(lookup func(string) string) (dir, variable string) {
	if d := lookup(EnvStateDir); d != "" {
		return d, EnvStateDir
	}
	if d := lookup(EnvSystemdStateDir); d != "" {
		// systemd lists one path per StateDirectory= entry, colon-separated.
		d, _, _ = strings.Cut(d, ":")
		return d, EnvSystemdStateDir
	}
	return "", ""
}

// Options configures a Store. The zero value works.
type Options struct {
	Clock      clock.Clock // default clock.Real
	Logger     zerolog.Logger
	Registerer prometheus.Registerer // optional
	// MinInterval is the least time between two writes of the file (default
	// 1 s): a storm of changes is one write, and the last change is written
	// at most MinInterval after it happened (at once by Close).
	MinInterval time.Duration
	// CheckTimeout bounds one getSessionKeyInfo at restore (default 15 s);
	// a check that runs out counts as Erply unreachable.
	CheckTimeout time.Duration
	// Concurrency bounds the checks run in parallel at restore (default 8).
	Concurrency int
}

// Store is an open state directory: it holds the directory's lock, the
// sessions loaded from its file (for Restore), and writes the pool's
// sessions back (Follow). Its methods are safe for concurrent use. Make one
// with Open, release it with Close.
type Store struct {
	dir  string
	path string
	opts Options
	clk  clock.Clock
	log  zerolog.Logger
	m    metrics

	lock    *os.File // flock held until Close
	dirFile *os.File // for fsync of the directory after a rename

	loaded   map[string]*record // the file as found at Open
	findings []string           // what was wrong with it

	closeOnce sync.Once
	ctx       context.Context // cancelled by Close: ends the checks under way
	cancel    context.CancelFunc
	wg        sync.WaitGroup // timers armed and callbacks running (writes, rechecks)

	mu        sync.Mutex
	closed    bool
	creds     map[string]credInfo
	hold      map[string]string // credential → key not to save: a session of the credential's previous identity
	follow    *pool.Pool        // set by Follow
	following bool              // between Follow and its stop: changes are written
	unfollow  func()
	dirty     bool
	pending   clock.Timer // the next write, when one is scheduled
	lastWrite time.Time
	failing   bool   // the last write failed (logged once until one succeeds)
	written   []byte // content of the last successful write
	rechecks  map[string]clock.Timer

	writeMu sync.Mutex // one write at a time
}

type credInfo struct {
	fingerprint string
}

// Open opens dir as the state directory: it refuses a directory that is
// not a directory, not owned by the daemon's user, or writable by group or
// others (ErrUnsafeDir), creates it (mode 0700) if it does not exist, takes
// its lock (ErrLocked when another erply-sessiond holds it) and loads
// state.json. A missing, unreadable or corrupt file is not an error: it is
// reported by Restore as a finding and every credential logs in. The error
// does not name the variable: the caller prefixes it (SESSIOND_STATE_DIR: …).
func Open(dir string, opts Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("no state directory given")
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.MinInterval <= 0 {
		opts.MinInterval = time.Second
	}
	if opts.CheckTimeout <= 0 {
		opts.CheckTimeout = 15 * time.Second
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("cannot create the state directory: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("cannot open the state directory: %w", err)
	}
	if err := checkDir(d, dir); err != nil {
		d.Close()
		return nil, err
	}
	lock, err := takeLock(dir)
	if err != nil {
		d.Close()
		return nil, err
	}
	s := &Store{
		dir: dir, path: filepath.Join(dir, FileName), opts: opts, clk: opts.Clock,
		log:  opts.Logger.With().Str("component", "state").Logger(),
		lock: lock, dirFile: d,
		creds: map[string]credInfo{}, hold: map[string]string{}, rechecks: map[string]clock.Timer{},
	}
	s.m = newMetrics()
	if opts.Registerer != nil {
		if err := s.m.register(opts.Registerer); err != nil {
			s.release()
			return nil, fmt.Errorf("state: register metrics: %w", err)
		}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.removeTemps()
	s.loaded, s.findings = s.load()
	return s, nil
}

// checkDir refuses a state directory someone other than the daemon's user
// could write: they could plant a session of their choosing or read keys.
// It looks at the opened directory itself, so a rename after the check
// cannot swap it.
func checkDir(d *os.File, dir string) error {
	fi, err := d.Stat()
	if err != nil {
		return fmt.Errorf("cannot read the state directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrUnsafeDir, dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w: cannot tell who owns %s", ErrUnsafeDir, dir)
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("%w: %s belongs to uid %d, but erply-sessiond runs as uid %d; the directory holding saved session keys must belong to the daemon's user (chown it, or let systemd's StateDirectory= create it)",
			ErrUnsafeDir, dir, st.Uid, uid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w: %s is writable by its group or by others (mode %04o), who could plant or replace saved sessions; make it private to the daemon's user (chmod 0700 %s)",
			ErrUnsafeDir, dir, perm, dir)
	}
	return nil
}

// takeLock takes an exclusive advisory lock on dir's lock file: two daemons
// writing one state file would each restore and overwrite the other's
// sessions.
func takeLock(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cannot open the lock file of the state directory: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by another erply-sessiond (lock %s); each daemon needs a state directory of its own",
				ErrLocked, dir, path)
		}
		return nil, fmt.Errorf("cannot lock the state directory %s: %w", dir, err)
	}
	return f, nil
}

// removeTemps removes temporary files a write cut short (a crash between
// create and rename) left behind. The lock is held: no write is under way.
func (s *Store) removeTemps() {
	tmps, _ := filepath.Glob(filepath.Join(s.dir, tempPattern))
	for _, t := range tmps {
		if err := os.Remove(t); err == nil {
			s.log.Debug().Str("file", t).Msg("removed a temporary file left by an interrupted write")
		}
	}
}

// load reads state.json. It never fails: problems are findings.
func (s *Store) load() (map[string]*record, []string) {
	f, err := os.OpenFile(s.path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, []string{"no state file yet (" + s.path + "): every credential logs in"}
	case errors.Is(err, syscall.ELOOP):
		return nil, []string{s.path + " is a symbolic link, not a file this daemon wrote: ignored, every credential logs in"}
	case err != nil:
		return nil, []string{"cannot read the state file: " + err.Error() + ": every credential logs in"}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, []string{"cannot read the state file: " + err.Error() + ": every credential logs in"}
	}
	if !fi.Mode().IsRegular() {
		return nil, []string{s.path + " is not a regular file: ignored, every credential logs in"}
	}
	var findings []string
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, []string{fmt.Sprintf("%s belongs to uid %d, not to this daemon's user: ignored, every credential logs in", s.path, st.Uid)}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		findings = append(findings, fmt.Sprintf("%s had mode %04o: its session keys may have been read by others (it is rewritten with mode 0600)", s.path, perm))
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, append(findings, "cannot read the state file: "+err.Error()+": every credential logs in")
	}
	if len(data) > maxFileSize {
		return nil, append(findings, fmt.Sprintf("the state file is larger than %d bytes: ignored, every credential logs in", maxFileSize))
	}
	recs, more := parse(data)
	return recs, append(findings, more...)
}

// Dir returns the state directory.
func (s *Store) Dir() string { return s.dir }

// Close stops following the pool and the checks of restored sessions,
// writes the last change if it is not written yet, and releases the
// directory's lock. It is safe to call more than once. Close the Store
// before the pool, so that no check outlives the pool.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		for name, t := range s.rechecks {
			if t.Stop() {
				s.wg.Done()
			}
			delete(s.rechecks, name)
		}
		s.mu.Unlock()
		s.cancel()
		err = s.stopFollowing()
		s.wg.Wait()
		s.release()
	})
	return err
}

func (s *Store) release() {
	s.lock.Close() // closing the descriptor releases the flock
	s.dirFile.Close()
}

// metrics are the restore counters.
type metrics struct {
	restored *prometheus.CounterVec
	dead     prometheus.Counter
	skipped  *prometheus.CounterVec
	writes   *prometheus.CounterVec
}

func newMetrics() metrics {
	m := metrics{
		restored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erply_sessiond_sessions_restored_total",
			Help: "Sessions restored from the state file at start, without a login, by what Erply said when asked: valid, or unreachable (served until its saved expiry).",
		}, []string{"check"}),
		dead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "erply_sessiond_sessions_restored_dead_total",
			Help: "Saved sessions Erply reported expired or deleted (1054/1055) when checked; each costs an ordinary login.",
		}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erply_sessiond_sessions_restore_skipped_total",
			Help: "Credentials not restored from the state file at start, by reason; each logs in as usual.",
		}, []string{"reason"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erply_sessiond_state_writes_total",
			Help: "Writes of the state file by result (ok, error).",
		}, []string{"result"}),
	}
	for _, c := range []string{checkValid, checkUnreachable} {
		m.restored.WithLabelValues(c)
	}
	for _, r := range skipReasons {
		m.skipped.WithLabelValues(r)
	}
	m.writes.WithLabelValues("ok")
	m.writes.WithLabelValues("error")
	return m
}

func (m metrics) register(r prometheus.Registerer) error {
	cs := []prometheus.Collector{m.restored, m.dead, m.skipped, m.writes}
	for i, c := range cs {
		if err := r.Register(c); err != nil {
			for _, done := range cs[:i] {
				r.Unregister(done)
			}
			return err
		}
	}
	return nil
}
