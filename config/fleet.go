package config

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Fleet mode variables (see Fleet).
const (
	VarFleetRedisURL = Prefix + "FLEET_REDIS_URL"
	VarFleetName     = Prefix + "FLEET_NAME"
	VarFleetKeyFile  = Prefix + "FLEET_KEY_FILE"
	VarFleetLockTTL  = Prefix + "FLEET_LOCK_TTL"
)

// Fleet mode defaults.
const (
	DefaultFleetName    = "default"
	DefaultFleetLockTTL = 15 * time.Second
	// MinFleetLockTTL is the shortest lock TTL: a shorter one expires
	// under a login that is merely slow.
	MinFleetLockTTL = time.Second
)

// sfxFleet is SESSIOND_<NAME>_FLEET: false keeps one credential local.
const sfxFleet = "FLEET"

var fleetVars = []string{VarFleetRedisURL, VarFleetRedisURL + "_FILE", VarFleetName, VarFleetKeyFile, VarFleetLockTTL}

// Fleet is fleet mode's settings: daemons with the same Name share each
// credential's session through the Redis at RedisURL. It is off when
// RedisURL is not set.
type Fleet struct {
	// RedisURL is redis://, rediss:// or unix://; it may carry a password,
	// so it has a _FILE form and is never shown whole.
	RedisURL Secret
	Name     string
	// KeyFile is the keyring: one "ID BASE64-OF-32-BYTES" a line; the
	// first key encrypts, every key decrypts.
	KeyFile string
	LockTTL time.Duration
}

// Enabled reports whether fleet mode is on.
func (f Fleet) Enabled() bool { return f.RedisURL.IsSet() }

// Summary describes fleet mode on one line for check-config, with any
// password in the Redis URL redacted and no key material.
func (f Fleet) Summary() string {
	if !f.Enabled() {
		return "fleet: off"
	}
	where := "inline"
	if f.RedisURL.File != "" {
		where = "file:" + f.RedisURL.File
	}
	if v, err := f.RedisURL.Read(); err == nil {
		if u, err := url.Parse(v); err == nil {
			where += " " + u.Redacted()
		}
	}
	keys := "unreadable"
	if ks, err := ReadKeyring(f.KeyFile); err == nil {
		keys = fmt.Sprintf("%d (encrypting with %s)", len(ks), ks[0].ID)
	}
	return fmt.Sprintf("fleet: name=%s redis=%s keyFile=%s keys=%s lockTTL=%s", f.Name, where, f.KeyFile, keys, f.LockTTL)
}

// Key is one key of the fleet keyring. Its String never shows the secret.
type Key struct {
	ID     string
	Secret [32]byte
}

// String names the key by its ID only.
func (k Key) String() string { return "key " + k.ID }

// GoString names the key by its ID only, so %#v cannot print the secret either.
func (k Key) GoString() string { return "config.Key{ID: " + fmt.Sprintf("%q", k.ID) + "}" }

// ReadKeyring reads a keyring file (see ParseKeyring). Errors name the
// file and line, never key material.
func ReadKeyring(path string) ([]Key, error) {
	if path == "" {
		return nil, errors.New("no key file")
	}
	b, err := readSmallRegularFile(path, maxSecretFileSize)
	if err != nil {
		return nil, err
	}
	keys, err := ParseKeyring(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// ParseKeyring parses a keyring: one "ID BASE64" a line, the base64
// (standard alphabet, padded or not) of exactly 32 bytes; blank lines and
// lines starting with # are ignored. IDs are letters, digits, '.', '_' and
// '-', unique. The first key is the one that encrypts.
func ParseKeyring(b []byte) ([]Key, error) {
	var keys []Key
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("line %d: want \"ID BASE64-OF-32-BYTES\"", n)
		}
		id := f[0]
		if !validKeyID(id) {
			return nil, fmt.Errorf("line %d: key ID %s is not 1 to 32 letters, digits, '.', '_' or '-'", n, show(id))
		}
		if seen[id] {
			return nil, fmt.Errorf("line %d: key ID %s is listed twice", n, show(id))
		}
		raw, err := base64.StdEncoding.DecodeString(f[1])
		if err != nil {
			raw, err = base64.RawStdEncoding.DecodeString(f[1])
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: key %s is not base64", n, id)
		}
		if len(raw) != 32 {
			return nil, fmt.Errorf("line %d: key %s is %d bytes; AES-256 needs 32", n, id, len(raw))
		}
		seen[id] = true
		k := Key{ID: id}
		copy(k.Secret[:], raw)
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("no key in the file")
	}
	return keys, nil
}

func validKeyID(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validFleetName: fleet names become part of Redis key names.
func validFleetName(s string) bool { return validKeyID(s) }

// fleet reads the fleet mode settings.
func (b *builder) fleet() Fleet {
	f := Fleet{Name: DefaultFleetName, LockTTL: DefaultFleetLockTTL}
	f.RedisURL = Secret{Var: VarFleetRedisURL}
	f.RedisURL.Value, _ = b.get(VarFleetRedisURL)
	f.RedisURL.File, _ = b.get(VarFleetRedisURL + "_FILE")
	if !f.Enabled() {
		for _, v := range fleetVars[2:] {
			if _, set := b.get(v); set {
				b.fail(v, "set without %s (fleet mode is off)", VarFleetRedisURL)
			}
		}
		return f
	}
	urlVar := VarFleetRedisURL
	switch {
	case f.RedisURL.Value != "" && f.RedisURL.File != "":
		b.fail(urlVar, "set only one of %s and %s_FILE", urlVar, urlVar)
	case f.RedisURL.File != "":
		urlVar += "_FILE"
		if err := checkSecretFile(f.RedisURL.File); err != nil {
			b.fail(urlVar, "%v", err)
		} else if v, err := f.RedisURL.Read(); err != nil {
			b.fail(urlVar, "%v", err)
		} else if err := checkRedisURL(v); err != nil {
			b.fail(urlVar, "the URL in %s: %v", f.RedisURL.File, err)
		}
	default:
		if err := checkRedisURL(f.RedisURL.Value); err != nil {
			b.fail(urlVar, "%v", err)
		}
	}
	if v, ok := b.get(VarFleetName); ok {
		if validFleetName(v) {
			f.Name = v
		} else {
			b.fail(VarFleetName, "%s is not 1 to 32 letters, digits, '.', '_' or '-'", show(v))
		}
	}
	if v, ok := b.get(VarFleetKeyFile); !ok {
		b.fail(VarFleetKeyFile, "required with %s: the keyring that encrypts the shared sessions", VarFleetRedisURL)
	} else if _, err := ReadKeyring(v); err != nil {
		b.fail(VarFleetKeyFile, "%v", err)
	} else {
		f.KeyFile = v
	}
	f.LockTTL = b.duration(VarFleetLockTTL, DefaultFleetLockTTL, MinFleetLockTTL)
	return f
}

// checkRedisURL validates a Redis URL the way the fleet's client will parse
// it. The URL is never part of the message: it may carry a password.
func checkRedisURL(v string) error {
	u, err := url.Parse(v)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("not a valid URL: %w", err)
	}
	switch u.Scheme {
	case "redis", "rediss":
		if u.Host == "" {
			return errors.New("has no host")
		}
	case "unix":
		if u.Path == "" {
			return errors.New("has no socket path (unix:///path/to/redis.sock)")
		}
	default:
		return errors.New("must be a redis://, rediss:// or unix:// URL")
	}
	if _, err := redis.ParseURL(v); err != nil {
		msg := err.Error()
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
		return errors.New(strings.TrimPrefix(msg, "redis: "))
	}
	return nil
}
