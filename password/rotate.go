// Package password owns a password credential's password through its life: reporting that Erply says it expired, rotating it with changePassword, and finishing a rotation cut short.
package password

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/internal/answer"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Upstream is what a rotation asks of Erply; *upstream.Client implements it.
type Upstream interface {
	ChangePassword(ctx context.Context, acct upstream.Account, sessionKey, oldPassword, newPassword string, sessionLength int) (*upstream.Session, error)
}

// Sessions is what a rotation needs of the pool; *pool.Pool implements it.
type Sessions interface {
	Get(ctx context.Context, name string) (*pool.Snapshot, error)
	Invalidate(ctx context.Context, name, staleKey string) (*pool.Snapshot, error)
	// Install makes the session changePassword returned the current one:
	// pins switch again on it, subscribers (sinks, state, fleet) get it.
	Install(name string, g pool.Grant, origin string) (*pool.Snapshot, error)
	Credential(name string) (config.Credential, bool)
	Subscribe(f func(*pool.Snapshot)) (cancel func())
}

// Locker holds a credential's lock beyond this process for the whole of a
// change — the fleet's lock, so that no other daemon sharing the password
// file logs in or rotates meanwhile. Lock returns when the lock is held or
// ctx ends.
type Locker interface {
	Lock(ctx context.Context, name string) (unlock func(), err error)
}

// Defaults for the zero fields of Options.
const (
	// DefaultTimeout bounds one rotation, from the checks to the install.
	DefaultTimeout = 90 * time.Second
	// DefaultAutoInterval is the least time between two automatic
	// rotations of one credential.
	DefaultAutoInterval = time.Hour
)

// OriginChangePassword is the origin of a rotated session in the pool's log.
const OriginChangePassword = "password changed"

// Options configures a Rotator. Sessions, Upstream and Files are required.
type Options struct {
	Sessions Sessions
	Upstream Upstream
	// Files must be the Files whose Methods the pool logs in with: a login
	// and a rotation of one password file never overlap.
	Files  *Files
	Clock  clock.Clock // default clock.Real
	Logger zerolog.Logger
	// Registerer, when set, gets erply_sessiond_password_rotations_total.
	Registerer prometheus.Registerer
	// Rand is the random source of new passwords (default crypto/rand.Reader).
	Rand io.Reader
	// Timeout bounds one rotation (default DefaultTimeout).
	Timeout time.Duration
	// AutoInterval is the least time between two automatic rotations of
	// one credential, on Clock (default DefaultAutoInterval).
	AutoInterval time.Duration
	// Locker, when set, is held around each change, outside the file lock
	// (fleet mode). Nil: this process's file lock is the only one.
	Locker Locker
}

// Rotator rotates password credentials' passwords with Erply's
// changePassword, on request (Rotate) or automatically after a login whose
// reply says the password expired (the credential's ROTATE_PASSWORD). It
// watches every login and logs a warning for each while Erply says a
// password expired. At most one rotation per credential is in flight. Its
// methods are safe for concurrent use; make one with NewRotator and Close
// it.
type Rotator struct {
	sessions Sessions
	up       Upstream
	files    *Files
	clk      clock.Clock
	log      zerolog.Logger
	rand     io.Reader
	timeout  time.Duration
	interval time.Duration
	locker   Locker
	results  *prometheus.CounterVec

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	unsub  func()
	wg     sync.WaitGroup // rotations and automatic starts in flight

	mu       sync.Mutex
	closed   bool
	inFlight map[string]bool
	logins   map[string]uint64    // the last Snapshot.Logins seen per credential
	lastAuto map[string]time.Time // when an automatic rotation last started
}

// NewRotator returns a Rotator subscribed to opts.Sessions.
func NewRotator(opts Options) (*Rotator, error) {
	if opts.Sessions == nil || opts.Upstream == nil || opts.Files == nil {
		return nil, errors.New("password: Sessions, Upstream and Files are required")
	}
	r := &Rotator{
		sessions: opts.Sessions, up: opts.Upstream, files: opts.Files, clk: opts.Clock,
		log: opts.Logger.With().Str("component", "password").Logger(), rand: opts.Rand,
		timeout: opts.Timeout, interval: opts.AutoInterval, locker: opts.Locker,
		inFlight: map[string]bool{}, logins: map[string]uint64{}, lastAuto: map[string]time.Time{},
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "erply_sessiond_password_rotations_total",
			Help: `Password rotations by credential and result ("ok", "conflict": refused before calling Erply, "erply_refused", "unknown": Erply's answer was lost, "error").`,
		}, []string{"credential", "result"}),
	}
	if r.clk == nil {
		r.clk = clock.Real{}
	}
	if r.rand == nil {
		r.rand = rand.Reader
	}
	if r.timeout <= 0 {
		r.timeout = DefaultTimeout
	}
	if r.interval <= 0 {
		r.interval = DefaultAutoInterval
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(r.results); err != nil {
			return nil, fmt.Errorf("password: register metrics: %w", err)
		}
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.unsub = r.sessions.Subscribe(r.observe)
	return r, nil
}

// Close stops watching logins, cancels rotations that have not called
// Erply yet and waits for every rotation to end; one whose changePassword
// call is under way is finished (within its timeout) rather than cut
// between Erply's answer and the rename. It is safe to call more than once.
func (r *Rotator) Close() error {
	r.mu.Lock()
	r.closed = true
	unsub := r.unsub
	r.unsub = nil
	r.mu.Unlock()
	if unsub != nil {
		unsub()
	}
	r.cancel()
	r.wg.Wait()
	return nil
}

// Answers of Rotate that are not Erply's or the pool's.
var (
	errInFlight   = answer.New(http.StatusConflict, "rotation_in_flight", "a password rotation of this credential is already in flight")
	errClosed     = answer.New(http.StatusServiceUnavailable, "shutting_down", "the daemon is shutting down")
	errNotSettled = cannot("PASSWORD_FILE.next is left by an earlier rotation whose outcome is unknown, and logging in again did not settle it; the daemon tries it at its next login that Erply refuses with 1051")
	errNoSession  = errors.New("the pool answered without a session")
)

// cannot is the 409 answer for a credential that cannot be rotated.
func cannot(reason string) *answer.Error {
	return answer.New(http.StatusConflict, "cannot_rotate", reason)
}

// Rotate changes the password of credential name and returns the snapshot
// holding the session changePassword returned. The sequence:
//
//  1. Checks, before any call to Erply: the credential is of kind password,
//     its password comes from PASSWORD_FILE, and the file and its directory
//     are writable; else a 409 naming the reason.
//  2. The current session (the pool's Get) for its key.
//  3. Under the file's lock (and the Locker's, when set): a new password
//     from Rand is written to PASSWORD_FILE.next (0600, fsync, directory
//     fsync), then changePassword is called with the key, the old and the
//     new password and the credential's session length.
//  4. On success .next is renamed over PASSWORD_FILE (keeping its mode) and
//     the new session is installed in the pool. On an Erply refusal .next is
//     removed and nothing else changes (502 with erplyCode); when the key
//     was already dead (1054/1055) the pool logs in again and the change is
//     tried once more. When Erply's answer is lost the outcome is unknown:
//     .next is kept for the 1051 recovery (Methods) and a 502 says so.
//
// The caller giving up (ctx) stops a rotation only before changePassword is
// sent. Errors are *answer.Error values, or the pool's errors.
func (r *Rotator) Rotate(ctx context.Context, name string) (*pool.Snapshot, error) {
	if _, ok := r.sessions.Credential(name); !ok {
		// Not counted: the metric's labels are configured names only.
		return nil, fmt.Errorf("%w: %q", pool.ErrUnknownCredential, name)
	}
	if err := r.begin(name); err != nil {
		r.count(name, resultOf(err))
		return nil, err
	}
	defer r.end(name)
	snap, err := r.rotate(ctx, name)
	r.count(name, resultOf(err))
	return snap, err
}

func (r *Rotator) count(name, result string) {
	r.results.WithLabelValues(name, result).Inc()
}

// resultOf names a rotation's outcome for the metric.
func resultOf(err error) string {
	var ae *answer.Error
	switch {
	case err == nil:
		return "ok"
	case !errors.As(err, &ae):
		return "error"
	case ae.Status == http.StatusConflict:
		return "conflict"
	case ae.Code == "erply_refused":
		return "erply_refused"
	case ae.Code == "rotation_unknown":
		return "unknown"
	}
	return "error"
}

func (r *Rotator) begin(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed:
		return errClosed
	case r.inFlight[name]:
		return errInFlight
	}
	r.inFlight[name] = true
	r.wg.Add(1)
	return nil
}

func (r *Rotator) end(name string) {
	r.mu.Lock()
	delete(r.inFlight, name)
	r.mu.Unlock()
	r.wg.Done()
}

func (r *Rotator) rotate(ctx context.Context, name string) (*pool.Snapshot, error) {
	cred, ok := r.sessions.Credential(name)
	if !ok {
		return nil, fmt.Errorf("%w: %q", pool.ErrUnknownCredential, name)
	}
	path, err := rotatable(cred)
	if err != nil {
		r.log.Warn().Str("credential", name).Str("reason", err.Error()).Msg("password rotation refused")
		return nil, err
	}
	// base is the rotation's own life: Close and the timeout end it, the
	// caller does not. pre also ends when the caller gives up, and governs
	// every step before changePassword is sent.
	base, cancel := context.WithTimeout(r.ctx, r.timeout)
	defer cancel()
	pre, cancelPre := context.WithCancel(base)
	defer cancelPre()
	defer context.AfterFunc(ctx, cancelPre)()

	for attempt := 1; ; attempt++ {
		snap, err := r.sessions.Get(pre, name)
		if err != nil {
			return nil, err
		}
		if snap.Session == nil {
			return nil, errNoSession
		}
		key := snap.Session.SessionKey
		out, again, err := r.change(pre, base, cred, path, key)
		if !again {
			return out, err
		}
		if attempt == 2 {
			if errors.Is(err, errLeftover) {
				return nil, errNotSettled
			}
			return nil, refused(err)
		}
		// The key was dead, or a leftover .next needs settling: a login
		// (through Methods, under the file's lock) does both.
		if _, err := r.sessions.Invalidate(pre, name, key); err != nil {
			return nil, err
		}
	}
}

// rotatable checks step 1 and returns the file to rewrite.
func rotatable(cred config.Credential) (string, error) {
	p := config.Prefix
	switch {
	case !isPasswordKind(cred):
		return "", cannot(fmt.Sprintf("credential %s is of kind %s: only password credentials have a password to rotate", cred.Name, cred.Kind))
	case cred.Password.File == "":
		return "", cannot(fmt.Sprintf("the password of %s comes from the environment (%s): only a password in %s_FILE can be rotated", cred.Name, nonEmpty(cred.Password.Var, p+"…_PASSWORD"), nonEmpty(cred.Password.Var, p+"…_PASSWORD")))
	}
	path := resolve(cred.Password.File)
	if err := checkWritable(path); err != nil {
		return "", cannot(err.Error())
	}
	return path, nil
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// errLeftover marks an attempt that found PASSWORD_FILE.next already there.
var errLeftover = errors.New("PASSWORD_FILE.next exists")

// change is one attempt of step 3 and 4 under the locks. again reports that
// the pool should log in and the attempt be made once more (err says why).
func (r *Rotator) change(pre, base context.Context, cred config.Credential, path, key string) (_ *pool.Snapshot, again bool, _ error) {
	name := cred.Name
	log := r.log.With().Str("credential", name).Logger()
	if r.locker != nil {
		unlock, err := r.locker.Lock(pre, name)
		if err != nil {
			return nil, false, err
		}
		defer unlock()
	}
	unlock, err := r.files.lock(pre, path)
	if err != nil {
		return nil, false, err
	}
	defer unlock()

	next := path + NextSuffix
	if _, err := os.Lstat(next); err == nil {
		log.Warn().Str("file", next).Msg("found the new password file of an earlier rotation: settling it with a login before rotating")
		return nil, true, errLeftover
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("checking %s: %w", next, err)
	}
	old, err := cred.Password.Read()
	if err != nil {
		return nil, false, err
	}
	pw, err := Generate(r.rand, Length)
	if err != nil {
		return nil, false, err
	}
	if err := writeNext(next, pw); err != nil {
		return nil, false, fmt.Errorf("writing the new password to %s: %w", next, err)
	}
	if err := pre.Err(); err != nil {
		// The last point at which giving up changes nothing.
		removeNext(log, next)
		return nil, false, err
	}

	acct := upstream.Account{ClientCode: cred.ClientCode, APIURL: cred.APIURL}
	start := r.clk.Now()
	// Once sent, the call is not abandoned because the caller left: an
	// answer lost here would leave the outcome unknown.
	callCtx, cancelCall := context.WithTimeout(context.WithoutCancel(base), r.timeout)
	sess, err := r.up.ChangePassword(callCtx, acct, key, old, pw, cred.SessionLength)
	cancelCall()
	if err != nil {
		code := upstream.CodeOf(err)
		if code == 0 {
			log.Error().Err(err).Str("file", next).
				Msg("changePassword's answer was lost: the password may have changed; PASSWORD_FILE.next is kept and is tried if Erply refuses PASSWORD_FILE")
			return nil, false, &answer.Error{Status: http.StatusBadGateway, Code: "rotation_unknown",
				Message: "Erply's answer to changePassword was lost (" + err.Error() + "): the password may or may not have changed; " +
					"the new one is kept in PASSWORD_FILE.next and is used if Erply refuses the old one"}
		}
		removeNext(log, next)
		if code == upstream.CodeSessionExpired || code == upstream.CodeSessionInvalid {
			log.Info().Err(err).Msg("changePassword refused the session key: logging in again to retry once")
			return nil, true, err
		}
		log.Warn().Err(err).Msg("Erply refused the password change; the password is unchanged")
		return nil, false, refused(err)
	}
	if sess == nil || sess.SessionKey == "" {
		// Erply said ok: the password has changed even if the session
		// cannot be used.
		err = errors.New("changePassword answered without a session key")
	}
	rerr := replace(next, path)
	if rerr != nil {
		log.Error().Err(rerr).Str("file", next).
			Msg("Erply changed the password but PASSWORD_FILE could not be replaced: the new password stays in PASSWORD_FILE.next and is used if Erply refuses the old one")
	}
	if err != nil {
		return nil, false, err
	}
	snap, ierr := r.sessions.Install(name, pool.Grant{Session: sess, Obtained: start}, OriginChangePassword)
	switch {
	case ierr != nil:
		log.Error().Err(ierr).Msg("the password was changed but its session could not be installed")
		return nil, false, ierr
	case rerr != nil:
		return nil, false, &answer.Error{Status: http.StatusInternalServerError, Code: "rotation_incomplete",
			Message: "Erply changed the password and its session is served, but PASSWORD_FILE could not be replaced (" + unwrapPath(rerr).Error() +
				"): the new password is in PASSWORD_FILE.next, which the daemon uses if Erply refuses the old one"}
	}
	log.Info().Str("key", pool.Fingerprint(sess.SessionKey)).Msg("password rotated")
	return snap, false, nil
}

// refused is the 502 answer for a change Erply refused.
func refused(err error) *answer.Error {
	return &answer.Error{Status: http.StatusBadGateway, Code: "erply_refused",
		Message: "Erply refused the password change (" + err.Error() + "); the password is unchanged", ErplyCode: upstream.CodeOf(err)}
}

func removeNext(log zerolog.Logger, next string) {
	if err := os.Remove(next); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn().Err(err).Str("file", next).Msg("could not remove the unused new password file")
	}
}

// observe is the pool subscription: for each login (Snapshot.Logins went
// up) whose reply says the password expired, a warning, and for a
// credential with ROTATE_PASSWORD=expired an automatic rotation unless one
// is in flight or one started less than AutoInterval ago.
func (r *Rotator) observe(s *pool.Snapshot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.Removed {
		delete(r.logins, s.Name)
		delete(r.lastAuto, s.Name)
		return
	}
	if s.Logins <= r.logins[s.Name] {
		return
	}
	r.logins[s.Name] = s.Logins
	if s.Session == nil || !s.Session.PasswordExpired {
		return
	}
	cred, _ := r.sessions.Credential(s.Name)
	auto := isPasswordKind(cred) && cred.RotatePassword == config.RotateExpired
	log := r.log.With().Str("credential", s.Name).Logger()
	if !auto {
		log.Warn().Msg("Erply says the password has expired: rotate it with `erply-sessiond rotate-password " + s.Name +
			"` or set " + config.Prefix + strings.ToUpper(s.Name) + "_ROTATE_PASSWORD=expired")
		return
	}
	now := r.clk.Now()
	last, rotated := r.lastAuto[s.Name]
	switch {
	case r.closed:
		return
	case r.inFlight[s.Name]:
		log.Warn().Msg("Erply says the password has expired; a rotation is already in flight")
		return
	case rotated && now.Sub(last) < r.interval:
		log.Warn().Time("notBefore", last.Add(r.interval)).
			Msg("Erply says the password has expired; the last automatic rotation was less than the interval ago, so none now")
		return
	}
	log.Warn().Msg("Erply says the password has expired: rotating it (ROTATE_PASSWORD=expired)")
	r.lastAuto[s.Name] = now
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if _, err := r.Rotate(r.ctx, s.Name); err != nil {
			log.Error().Err(err).Msg("automatic password rotation failed")
		}
	}()
}
