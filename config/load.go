// Package config owns the daemon's configuration: reading SESSIOND_* settings from the environment and the env file, and validating them.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
)

// Prefix starts the name of every variable the daemon reads.
const Prefix = "SESSIOND_"

// Defaults for settings that are not set (an empty value counts as not set).
const (
	DefaultSocket           = "/run/erply-sessiond/sessiond.sock"
	DefaultSocketMode       = os.FileMode(0o660)
	DefaultLogLevel         = "info"
	DefaultLogFormat        = "json"
	DefaultAPIURL           = "https://{clientCode}.erply.com/api/"
	DefaultEndpointCooldown = 30 * time.Second
	DefaultRefreshFraction  = 0.67
	DefaultExpiryMargin     = 60 * time.Second
	DefaultProxyConcurrency = 10
	DefaultSessionLength    = 3600
	// MinSessionLength is the shortest SESSION_LENGTH the daemon accepts:
	// shorter sessions leave no room between the refresh point and the
	// safety margin, and would be refreshed without pause.
	MinSessionLength = 5
	// MaxSessionLength is the longest session Erply grants (its documented
	// range is 1..86400 s); a reply claiming more is not trusted.
	MaxSessionLength = 86400
	DefaultSinkMode  = os.FileMode(0o640)
)

// Global variable names.
const (
	VarCredentials      = Prefix + "CREDENTIALS"
	VarSocket           = Prefix + "SOCKET"
	VarSocketMode       = Prefix + "SOCKET_MODE"
	VarHTTPAddr         = Prefix + "HTTP_ADDR"
	VarHTTPSessions     = Prefix + "HTTP_SESSIONS"
	VarLogLevel         = Prefix + "LOG_LEVEL"
	VarLogFormat        = Prefix + "LOG_FORMAT"
	VarAPIURL           = Prefix + "API_URL"
	VarEndpointCooldown = Prefix + "ENDPOINT_COOLDOWN"
	VarRefreshFraction  = Prefix + "REFRESH_FRACTION"
	VarExpiryMargin     = Prefix + "EXPIRY_MARGIN"
	VarProxyConcurrency = Prefix + "PROXY_CONCURRENCY"
	VarEnvFile          = Prefix + "ENV_FILE"
	VarStateDir         = Prefix + "STATE_DIR"
	VarEnvFileWatch     = Prefix + "ENV_FILE_WATCH"
	// VarSystemdStateDir is what systemd's StateDirectory= sets: the state
	// directory when SESSIOND_STATE_DIR is not.
	VarSystemdStateDir = "STATE_DIRECTORY"
)

var globalVars = []string{
	VarCredentials, VarSocket, VarSocketMode, VarHTTPAddr, VarHTTPSessions,
	VarLogLevel, VarLogFormat, VarAPIURL, VarEndpointCooldown, VarRefreshFraction,
	VarExpiryMargin, VarProxyConcurrency, VarEnvFile, VarStateDir, VarEnvFileWatch,
}

// Per-credential variable suffixes: SESSIOND_<NAME>_<suffix>.
const (
	sfxKind          = "KIND"
	sfxClientCode    = "CLIENT_CODE"
	sfxUsername      = "USERNAME"
	sfxPassword      = "PASSWORD"
	sfxPasswordFile  = "PASSWORD_FILE"
	sfxParent        = "PARENT"
	sfxPIN           = "PIN"
	sfxPINFile       = "PIN_FILE"
	sfxToken         = "TOKEN"
	sfxTokenFile     = "TOKEN_FILE"
	sfxSessionLength = "SESSION_LENGTH"
	sfxAPIURL        = "API_URL"
	sfxAllowUIDs     = "ALLOW_UIDS"
	sfxAllowGIDs     = "ALLOW_GIDS"
	sfxSinkFile      = "SINK_FILE"
	sfxSinkMode      = "SINK_MODE"
	sfxRotate        = "ROTATE_PASSWORD"
)

var credentialSuffixes = []string{
	sfxKind, sfxClientCode, sfxUsername, sfxPassword, sfxPasswordFile, sfxParent,
	sfxPIN, sfxPINFile, sfxToken, sfxTokenFile, sfxSessionLength, sfxAPIURL,
	sfxAllowUIDs, sfxAllowGIDs, sfxSinkFile, sfxSinkMode, sfxRotate, sfxFleet,
}

// kindSuffixes are the suffixes that mean something only for some kinds;
// the rest apply to every kind.
var kindSuffixes = map[Kind][]string{
	KindPassword: {sfxClientCode, sfxUsername, sfxPassword, sfxPasswordFile, sfxAPIURL, sfxRotate},
	KindPIN:      {sfxParent, sfxPIN, sfxPINFile},
	KindIdentity: {sfxClientCode, sfxToken, sfxTokenFile, sfxAPIURL},
	KindOAuth:    {sfxClientCode, sfxToken, sfxTokenFile, sfxAPIURL},
}

const (
	maxSecretFileSize = 64 << 10
	maxEnvFileSize    = 1 << 20
	// maxSocketPath is the longest path a Unix socket address holds on Linux
	// (sun_path is 108 bytes including the terminating NUL).
	maxSocketPath = 107
)

// Problem is one thing wrong with the configuration.
type Problem struct {
	Var string // the variable at fault, e.g. SESSIOND_POS_PASSWORD
	Msg string // what is wrong; never a secret's value
}

// String formats the problem as "VAR: message".
func (p Problem) String() string { return p.Var + ": " + p.Msg }

// ValidationError is every problem found in a configuration, so that an
// operator can fix them all in one go.
type ValidationError struct {
	Problems []Problem
	// Warnings are the non-fatal findings Load would have put in
	// Config.Warnings, kept so that check-config can show them too.
	Warnings []string
}

// Error returns one line per problem.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Load builds the configuration from environ (in os.Environ form; the first
// of duplicate entries wins, as with os.Getenv) and, when SESSIOND_ENV_FILE
// names one, the env file, whose values win over environ. It reads nothing
// else from the process environment, so it is safe for concurrent use, and
// it is what a reload calls again.
//
// Every secret file is opened and read once, so that an unreadable one stops
// the daemon at start rather than at its first login. A bad configuration
// returns a *ValidationError listing every problem.
func Load(environ []string) (*Config, error) {
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if _, dup := env[k]; !dup {
			env[k] = v
		}
	}
	path := env[VarEnvFile]
	if path == "" {
		return build(env, "")
	}
	b, err := readSmallRegularFile(path, maxEnvFileSize)
	if err != nil {
		return nil, &ValidationError{Problems: []Problem{{Var: VarEnvFile, Msg: oneLine(err.Error())}}}
	}
	return loadWithFile(env, path, b)
}

// loadWithFile merges the env file's contents b (read from path) over env
// and builds the configuration.
func loadWithFile(env map[string]string, path string, b []byte) (*Config, error) {
	vars, errs := parseEnvFile(b)
	if len(errs) > 0 {
		ve := &ValidationError{}
		for _, e := range errs {
			ve.Problems = append(ve.Problems, Problem{Var: VarEnvFile, Msg: oneLine(path + ": " + e.Error())})
		}
		return nil, ve
	}
	var warnings []string
	for k, v := range vars {
		if k == VarEnvFile {
			if v != path {
				warnings = append(warnings, oneLine(VarEnvFile+": set inside the env file "+path+"; ignored there (only the process environment names the env file)"))
			}
			continue
		}
		env[k] = v
	}
	c, err := build(env, path)
	if c != nil {
		c.Warnings = append(warnings, c.Warnings...)
	}
	if ve, ok := err.(*ValidationError); ok {
		ve.Warnings = append(warnings, ve.Warnings...)
	}
	return c, err
}

// builder reads typed settings from the merged environment and collects
// problems and warnings as it goes.
type builder struct {
	env      map[string]string
	problems []Problem
	warnings []string
}

// get returns the value of name; an empty value counts as unset.
func (b *builder) get(name string) (string, bool) {
	v := b.env[name]
	return v, v != ""
}

func (b *builder) fail(name, format string, args ...any) {
	b.problems = append(b.problems, Problem{Var: oneLine(name), Msg: oneLine(fmt.Sprintf(format, args...))})
}

func (b *builder) warn(name, format string, args ...any) {
	b.warnings = append(b.warnings, oneLine(name+": "+fmt.Sprintf(format, args...)))
}

// oneLine escapes control characters (a newline in a file name, say) so
// that every problem stays on its own line.
func oneLine(s string) string {
	if !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	var sb strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) {
			q := strconv.QuoteRune(r)
			sb.WriteString(q[1 : len(q)-1])
		} else {
			sb.WriteRune(r)
		}
	}
	return sb.String()
}

// show quotes a non-secret value for a message, shortened so that a pasted
// blob does not flood the log.
func show(v string) string {
	const max = 40
	if r := []rune(v); len(r) > max {
		v = string(r[:max]) + "…"
	}
	return strconv.Quote(v)
}

func (b *builder) mode(name string, def os.FileMode) os.FileMode {
	v, ok := b.get(name)
	if !ok {
		return def
	}
	n, err := strconv.ParseUint(v, 8, 32)
	if err != nil || n > 0o777 {
		b.fail(name, "%s is not an octal file mode such as %04o", show(v), uint32(def))
		return def
	}
	return os.FileMode(n)
}

func (b *builder) intRange(name string, def, lo, hi int, what string) int {
	v, ok := b.get(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		b.fail(name, "%s is not a whole number %sfrom %d to %d", show(v), what, lo, hi)
		return def
	}
	return n
}

func (b *builder) duration(name string, def, lo time.Duration) time.Duration {
	v, ok := b.get(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		b.fail(name, "%s is not a duration such as %s", show(v), def)
		return def
	}
	if d < lo {
		b.fail(name, "%s is shorter than the minimum %s", show(v), lo)
		return def
	}
	return d
}

func (b *builder) float(name string, def, lo, hi float64) float64 {
	v, ok := b.get(name)
	if !ok {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f >= lo && f <= hi) {
		b.fail(name, "%s is not a number from %g to %g", show(v), lo, hi)
		return def
	}
	return f
}

func (b *builder) boolean(name string, def bool) bool {
	v, ok := b.get(name)
	if !ok {
		return def
	}
	x, err := strconv.ParseBool(v)
	if err != nil {
		b.fail(name, "%s is not true or false", show(v))
		return def
	}
	return x
}

func (b *builder) oneOf(name, def string, allowed ...string) string {
	v, ok := b.get(name)
	if !ok {
		return def
	}
	if l := strings.ToLower(v); slices.Contains(allowed, l) {
		return l
	}
	b.fail(name, "%s is not one of %s", show(v), strings.Join(allowed, ", "))
	return def
}

// apiURL validates an API URL template. The URL itself is left out of the
// message: it could carry user:password.
func (b *builder) apiURL(name, def string) string {
	v, ok := b.get(name)
	if !ok {
		return def
	}
	u, err := url.Parse(strings.ReplaceAll(v, "{clientCode}", "123456"))
	switch {
	case err != nil:
		if ue, ok := err.(*url.Error); ok {
			err = ue.Err
		}
		b.fail(name, "not a valid URL: %v", err)
	case u.Scheme != "http" && u.Scheme != "https":
		b.fail(name, "must be an http:// or https:// URL")
	case u.Host == "":
		b.fail(name, "has no host")
	default:
		return v
	}
	return def
}

func (b *builder) ids(name, what string) []uint32 {
	v, ok := b.get(name)
	if !ok {
		return nil
	}
	var out []uint32
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			b.fail(name, "%s is not a %s (a non-negative integer); give a comma-separated list", show(f), what)
			return nil
		}
		out = append(out, uint32(n))
	}
	return out
}

func (b *builder) httpAddr() string {
	v, ok := b.get(VarHTTPAddr)
	if !ok {
		return ""
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		b.fail(VarHTTPAddr, "%s is not a host:port address such as 127.0.0.1:9090", show(v))
		return ""
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		b.fail(VarHTTPAddr, "%s has no valid port number", show(v))
		return ""
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		b.fail(VarHTTPAddr, "%s is not a loopback address (127.0.0.1, ::1 or localhost): the TCP listener has no caller checks", show(v))
		return ""
	}
	return v
}

// secret reads NAME and NAME_FILE for a kind that needs exactly one of them.
// primary is the form named when neither is set.
func (b *builder) secret(name string, kind Kind, fileFirst bool) Secret {
	s := Secret{Var: name}
	fileVar := name + "_FILE"
	s.Value, _ = b.get(name)
	s.File, _ = b.get(fileVar)
	switch {
	case s.Value != "" && s.File != "":
		b.fail(name, "set only one of %s and %s", name, fileVar)
	case s.Value == "" && s.File == "":
		if fileFirst {
			b.fail(fileVar, "required for kind %s (or %s)", kind, name)
		} else {
			b.fail(name, "required for kind %s (or %s)", kind, fileVar)
		}
	case s.File != "":
		if err := checkSecretFile(s.File); err != nil {
			b.fail(fileVar, "%v", err)
		}
	}
	return s
}

// checkSecretFile opens and reads a secret file the way a login will, but
// refuses anything that is not a regular file, so that a FIFO or a device
// cannot block or flood the start-up. Errors never carry the content.
func checkSecretFile(path string) error {
	b, err := readSmallRegularFile(path, maxSecretFileSize)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return fmt.Errorf("%s is empty", path)
	}
	return nil
}

// readSmallRegularFile reads a regular file of at most max bytes. The open
// is non-blocking so that a FIFO is reported rather than waited on.
func readSmallRegularFile(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	switch {
	case fi.IsDir():
		return nil, fmt.Errorf("%s is a directory", path)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d KiB", path, max>>10)
	}
	return b, nil
}

// MaxNameLen is the longest credential name. Names appear in routes
// (/v1/sessions/NAME), variable names and metric labels; one longer than
// this would log in and count as ready while every route answered 404.
const MaxNameLen = 64

// ValidName reports whether s can be a credential name: 1 to MaxNameLen
// lower-case letters, digits and _. It is the one rule for names: config
// enforces it and the local API checks paths against it.
func ValidName(s string) bool {
	if s == "" || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func validClientCode(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

// varPrefix is the variable prefix of credential name: SESSIOND_<NAME>_.
func varPrefix(name string) string { return Prefix + strings.ToUpper(name) + "_" }

// build turns the merged environment into a validated Config.
func build(env map[string]string, envFile string) (*Config, error) {
	b := &builder{env: env}
	c := &Config{
		Socket:           DefaultSocket,
		EnvFile:          envFile,
		EnvFileWatch:     b.boolean(VarEnvFileWatch, false),
		HTTPAddr:         b.httpAddr(),
		HTTPSessions:     b.boolean(VarHTTPSessions, false),
		LogLevel:         b.oneOf(VarLogLevel, DefaultLogLevel, "debug", "info", "warn", "error"),
		LogFormat:        b.oneOf(VarLogFormat, DefaultLogFormat, "json", "console"),
		APIURL:           b.apiURL(VarAPIURL, DefaultAPIURL),
		EndpointCooldown: b.duration(VarEndpointCooldown, DefaultEndpointCooldown, time.Second),
		RefreshFraction:  b.float(VarRefreshFraction, DefaultRefreshFraction, 0.1, 0.95),
		ExpiryMargin:     b.duration(VarExpiryMargin, DefaultExpiryMargin, time.Second),
		ProxyConcurrency: b.intRange(VarProxyConcurrency, DefaultProxyConcurrency, 1, 100, ""),
	}
	if v, ok := b.get(VarSocket); ok {
		if len(v) > maxSocketPath {
			b.fail(VarSocket, "path is %d bytes; a Unix socket path must be at most %d", len(v), maxSocketPath)
		} else {
			c.Socket = v
		}
	}
	c.SocketMode = b.mode(VarSocketMode, DefaultSocketMode)
	if v, set := b.get(VarSocketMode); set && c.SocketMode.Perm()&0o222 == 0 {
		// Connecting to a Unix socket needs write permission: such a
		// mode would let only root in. Refused rather than widened.
		b.fail(VarSocketMode, "%s lets no one but root connect (connecting needs write permission); use 0660 for the group, or 0600 for the daemon's own user", show(v))
	}
	if v, ok := b.get(VarStateDir); ok && v != "" {
		c.StateDir, c.StateDirVar = v, VarStateDir
	} else if v := env[VarSystemdStateDir]; v != "" {
		// systemd lists one path per StateDirectory= entry, colon-separated.
		v, _, _ = strings.Cut(v, ":")
		c.StateDir, c.StateDirVar = v, VarSystemdStateDir
	}
	if c.StateDir != "" && !filepath.IsAbs(c.StateDir) {
		b.fail(c.StateDirVar, "%s is not an absolute path", show(c.StateDir))
	}
	if c.EnvFileWatch && envFile == "" {
		b.warn(VarEnvFileWatch, "has no effect without %s", VarEnvFile)
	}
	if c.HTTPSessions && c.HTTPAddr == "" {
		if _, set := b.get(VarHTTPAddr); !set {
			b.warn(VarHTTPSessions, "has no effect without %s", VarHTTPAddr)
		}
	}

	c.Fleet = b.fleet()
	names := b.names()
	for _, name := range names {
		cr := b.credential(name, c.APIURL)
		cr.FleetLocal = !b.boolean(varPrefix(name)+sfxFleet, true)
		if _, set := b.get(varPrefix(name) + sfxFleet); set && !c.Fleet.Enabled() {
			b.warn(varPrefix(name)+sfxFleet, "has no effect without %s", VarFleetRedisURL)
		}
		c.Credentials = append(c.Credentials, cr)
	}
	b.resolveParents(c.Credentials)
	b.checkSinks(c.Credentials)
	b.unknownVars(names)

	if len(b.problems) > 0 {
		return nil, &ValidationError{Problems: b.problems, Warnings: b.warnings}
	}
	c.Warnings = b.warnings
	return c, nil
}

// names parses SESSIOND_CREDENTIALS; it returns only the valid, distinct names.
func (b *builder) names() []string {
	v, ok := b.get(VarCredentials)
	if !ok {
		b.fail(VarCredentials, "required: a comma-separated list of credential names such as pos,backoffice")
		return nil
	}
	var names []string
	for _, n := range strings.Split(v, ",") {
		n = strings.TrimSpace(n)
		switch {
		case n == "":
			b.fail(VarCredentials, "empty name in the list")
		case len(n) > MaxNameLen:
			b.fail(VarCredentials, "%s is %d characters long; a name has at most %d", show(n), len(n), MaxNameLen)
		case !ValidName(n):
			b.fail(VarCredentials, "%s is not a valid name (lower-case letters, digits and _)", show(n))
		case slices.Contains(names, n):
			b.fail(VarCredentials, "%s is listed twice", show(n))
		default:
			names = append(names, n)
		}
	}
	return names
}

// credential reads one credential's settings. Parent links are checked
// later, once every credential is known.
func (b *builder) credential(name, globalAPIURL string) Credential {
	p := varPrefix(name)
	cr := Credential{Name: name, Kind: KindPassword}
	if v, ok := b.get(p + sfxKind); ok {
		cr.Kind = Kind(strings.ToLower(v))
		if _, known := kindSuffixes[cr.Kind]; !known {
			b.fail(p+sfxKind, "%s is not one of password, pin, identity, oauth", show(v))
		}
	}
	_, knownKind := kindSuffixes[cr.Kind]
	if knownKind && cr.Kind != KindPIN {
		if v, ok := b.get(p + sfxClientCode); !ok {
			b.fail(p+sfxClientCode, "required for kind %s", cr.Kind)
		} else if !validClientCode(v) {
			b.fail(p+sfxClientCode, "%s is not a client code (letters and digits)", show(v))
		} else {
			cr.ClientCode = v
		}
		cr.APIURL = b.apiURL(p+sfxAPIURL, globalAPIURL)
	}
	switch cr.Kind {
	case KindPassword:
		if v, ok := b.get(p + sfxUsername); ok {
			cr.Username = v
		} else {
			b.fail(p+sfxUsername, "required for kind password")
		}
		cr.Password = b.secret(p+sfxPassword, cr.Kind, false)
		cr.RotatePassword = RotatePolicy(b.oneOf(p+sfxRotate, string(RotateNever), string(RotateNever), string(RotateExpired)))
		if cr.RotatePassword == RotateExpired && cr.Password.File == "" && cr.Password.Value != "" {
			b.fail(p+sfxRotate, "expired needs %s: a password given in %s cannot be rewritten", p+sfxPasswordFile, p+sfxPassword)
		}
	case KindPIN:
		if v, ok := b.get(p + sfxParent); ok {
			cr.Parent = v
		} else {
			b.fail(p+sfxParent, "required for kind pin: the credential whose session the PIN login switches")
		}
		cr.PIN = b.secret(p+sfxPIN, cr.Kind, false)
	case KindIdentity, KindOAuth:
		cr.Token = b.secret(p+sfxToken, cr.Kind, true)
	}
	if relevant, known := kindSuffixes[cr.Kind]; known {
		warned := make(map[string]bool)
		for _, kind := range []Kind{KindPassword, KindPIN, KindIdentity, KindOAuth} {
			for _, sfx := range kindSuffixes[kind] {
				if _, set := b.get(p + sfx); set && !slices.Contains(relevant, sfx) && !warned[sfx] {
					warned[sfx] = true
					b.warn(p+sfx, "not used by kind %s; ignored", cr.Kind)
				}
			}
		}
	}
	cr.SessionLength = b.intRange(p+sfxSessionLength, DefaultSessionLength, 1, 86400, "of seconds ")
	if cr.SessionLength < MinSessionLength {
		b.fail(p+sfxSessionLength, "%d s is too short to keep alive: below %d s the safety margin (at least 1 s, Erply's clock has whole seconds) leaves no time between refreshes; use %d or more",
			cr.SessionLength, MinSessionLength, MinSessionLength)
	}
	cr.AllowUIDs = b.ids(p+sfxAllowUIDs, "user id")
	cr.AllowGIDs = b.ids(p+sfxAllowGIDs, "group id")
	if v, ok := b.get(p + sfxSinkFile); ok {
		if filepath.IsAbs(v) {
			cr.SinkFile = filepath.Clean(v)
		} else {
			b.fail(p+sfxSinkFile, "%s is not an absolute path", show(v))
		}
	}
	cr.SinkMode = b.mode(p+sfxSinkMode, DefaultSinkMode)
	if _, set := b.get(p + sfxSinkMode); set && cr.SinkFile == "" {
		if _, fileSet := b.get(p + sfxSinkFile); !fileSet {
			b.warn(p+sfxSinkMode, "has no effect without %s", p+sfxSinkFile)
		}
	}
	return cr
}

// resolveParents checks every pin credential's parent chain and copies the
// client code and API URL from the credential at its root.
func (b *builder) resolveParents(creds []Credential) {
	byName := make(map[string]int, len(creds))
	for i, cr := range creds {
		byName[cr.Name] = i
	}
	for i := range creds {
		cr := &creds[i]
		if cr.Kind != KindPIN || cr.Parent == "" {
			continue
		}
		pv := varPrefix(cr.Name) + sfxParent
		chain := []string{cr.Name}
		cur := cr
		for cur.Kind == KindPIN {
			j, ok := byName[cur.Parent]
			if !ok {
				if cur == cr {
					b.fail(pv, "%s is not in %s", show(cr.Parent), VarCredentials)
				}
				// A broken link further up is reported on its own credential.
				cur = nil
				break
			}
			next := &creds[j]
			if slices.Contains(chain, next.Name) {
				b.fail(pv, "parent chain %s → %s is a cycle", strings.Join(chain, " → "), next.Name)
				cur = nil
				break
			}
			chain = append(chain, next.Name)
			cur = next
			if cur.Parent == "" && cur.Kind == KindPIN {
				cur = nil // its missing PARENT is reported on its own credential
				break
			}
		}
		if cur != nil {
			cr.ClientCode = cur.ClientCode
			cr.APIURL = cur.APIURL
		}
	}
}

// checkSinks rejects two credentials writing the same sink file: each would
// overwrite the other's key. A sink whose directory is missing is a
// warning: the daemon retries the write until the directory appears.
func (b *builder) checkSinks(creds []Credential) {
	seen := make(map[string]string)
	for _, cr := range creds {
		if cr.SinkFile == "" {
			continue
		}
		v := varPrefix(cr.Name) + sfxSinkFile
		if other, dup := seen[cr.SinkFile]; dup {
			b.fail(v, "same file as %s", other)
			continue
		}
		seen[cr.SinkFile] = v
		dir := filepath.Dir(cr.SinkFile)
		switch fi, err := os.Stat(dir); {
		case errors.Is(err, fs.ErrNotExist):
			b.warn(v, "directory %s does not exist: the key cannot be written until it does (the daemon retries)", dir)
		case err == nil && !fi.IsDir():
			b.warn(v, "%s is not a directory: the key cannot be written there", dir)
		}
	}
}

// unknownVars warns about SESSIOND_* variables that nothing reads: most are
// typos, or settings of a credential missing from SESSIOND_CREDENTIALS.
func (b *builder) unknownVars(names []string) {
	known := make(map[string]bool)
	for _, v := range append(globalVars, fleetVars...) {
		known[v] = true
	}
	for _, n := range names {
		for _, sfx := range credentialSuffixes {
			known[varPrefix(n)+sfx] = true
		}
	}
	var unknown []string
	for k := range b.env {
		if strings.HasPrefix(k, Prefix) && !known[k] {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	for _, k := range unknown {
		rest := strings.TrimPrefix(k, Prefix)
		name := ""
		for _, sfx := range credentialSuffixes {
			if n, ok := strings.CutSuffix(rest, "_"+sfx); ok && n != "" && ValidName(strings.ToLower(n)) && strings.ToUpper(n) == n {
				name = strings.ToLower(n)
				break
			}
		}
		if name != "" {
			b.warn(k, "credential %s is not in %s; ignored", show(name), VarCredentials)
		} else {
			b.warn(k, "unknown variable; ignored")
		}
	}
}
