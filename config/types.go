package config

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Kind is how a credential logs in.
type Kind string

// The credential kinds.
const (
	KindPassword Kind = "password" // verifyUser with USERNAME + PASSWORD
	KindPIN      Kind = "pin"      // switchUser with PIN on top of PARENT's session
	KindIdentity Kind = "identity" // verifyIdentityToken with TOKEN_FILE
	KindOAuth    Kind = "oauth"    // verifyOAuthToken with TOKEN_FILE
)

// Secret is a secret given inline (VAR) or as a file (VAR_FILE). A file is
// re-read on every Read, so a rotated file takes effect at the next login.
type Secret struct {
	Value string
	File  string
	// Var is the environment variable it came from (for error messages).
	Var string
}

// Read returns the secret, re-reading the file if one is set. Surrounding
// whitespace (a trailing newline) is trimmed. The error names the variable and
// file, never the content.
func (s Secret) Read() (string, error) {
	if s.File == "" {
		return s.Value, nil
	}
	b, err := readSmallRegularFile(s.File, maxSecretFileSize)
	if err != nil {
		return "", fmt.Errorf("%s_FILE: %w", s.Var, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s_FILE: %s is empty", s.Var, s.File)
	}
	return v, nil
}

// IsSet reports whether either form was given.
func (s Secret) IsSet() bool { return s.Value != "" || s.File != "" }

// Credential is one configured Erply login, from SESSIOND_<NAME>_* variables.
type Credential struct {
	Name       string // as written in SESSIOND_CREDENTIALS and in routes
	Kind       Kind
	ClientCode string // for pin credentials: copied from the parent after validation
	APIURL     string // template with {clientCode}; the global API_URL or Erply's default when unset
	Username   string
	Password   Secret // password kind
	PIN        Secret // pin kind
	Parent     string // pin kind
	Token      Secret // identity and oauth kinds (TOKEN_FILE, or TOKEN)
	// SessionLength is the requested lifetime in seconds (1..86400, default 3600).
	SessionLength int
	AllowUIDs     []uint32 // empty: anyone who can open the socket
	AllowGIDs     []uint32
	SinkFile      string
	SinkMode      os.FileMode // default 0640
	// RotatePassword is when the daemon changes the password itself
	// (ROTATE_PASSWORD, password kind only): RotateNever (the default) or
	// RotateExpired.
	RotatePassword RotatePolicy
	// FleetLocal keeps the credential out of fleet mode
	// (SESSIOND_<NAME>_FLEET=false): it logs in on its own.
	FleetLocal bool
}

// RotatePolicy says when a password credential's password is rotated
// automatically.
type RotatePolicy string

// The rotation policies.
const (
	// RotateNever only reports an expired password (the default).
	RotateNever RotatePolicy = "never"
	// RotateExpired rotates after a login whose reply says the password expired.
	RotateExpired RotatePolicy = "expired"
)

// Config is the whole daemon configuration.
type Config struct {
	Socket     string      // SESSIOND_SOCKET
	SocketMode os.FileMode // SESSIOND_SOCKET_MODE (octal string)
	// HTTPAddr is the optional loopback TCP listener (SESSIOND_HTTP_ADDR).
	HTTPAddr string
	// HTTPSessions enables session routes on the TCP listener (SESSIOND_HTTP_SESSIONS);
	// they then require the X-Sessiond-Request: 1 header.
	HTTPSessions     bool
	LogLevel         string        // SESSIOND_LOG_LEVEL: debug, info, warn, error
	LogFormat        string        // SESSIOND_LOG_FORMAT: json | console
	APIURL           string        // SESSIOND_API_URL: default template for every credential
	EndpointCooldown time.Duration // SESSIOND_ENDPOINT_COOLDOWN
	RefreshFraction  float64       // SESSIOND_REFRESH_FRACTION
	ExpiryMargin     time.Duration // SESSIOND_EXPIRY_MARGIN
	ProxyConcurrency int           // SESSIOND_PROXY_CONCURRENCY
	EnvFile          string        // SESSIOND_ENV_FILE
	// EnvFileWatch applies a change of EnvFile as SIGHUP would (SESSIOND_ENV_FILE_WATCH).
	EnvFileWatch bool
	// StateDir keeps sessions across restarts (SESSIOND_STATE_DIR, else
	// systemd's $STATE_DIRECTORY); "" when off. StateDirVar names where it came from.
	StateDir    string
	StateDirVar string
	Credentials []Credential // in SESSIOND_CREDENTIALS order
	// Fleet is fleet mode (SESSIOND_FLEET_*); off unless its Redis URL is set.
	Fleet Fleet
	// Warnings are non-fatal findings for the daemon to log: unknown
	// SESSIOND_* variables (typos), settings the credential's kind ignores.
	Warnings []string
}

// LoginSecret is the secret the credential logs in with: the password, the
// PIN or the token, as its kind says.
func (c Credential) LoginSecret() Secret {
	switch c.Kind {
	case KindPIN:
		return c.PIN
	case KindIdentity, KindOAuth:
		return c.Token
	}
	return c.Password
}
