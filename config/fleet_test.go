package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

const secretRedisPW = "redis-pw-SECRET"

func key64(b byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32)) }

func TestFleetConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keys := writeFile(t, dir, "keys", "# rotated 2026-11\nk2 "+key64(2)+"\n\nk1 "+strings.TrimRight(key64(1), "=")+"\n")
	urlFile := writeFile(t, dir, "url", "redis://sessiond:"+secretRedisPW+"@redis.example:6380/2\n")
	badKeys := map[string]string{
		"not base64":   "k1 !!!\n",
		"short":        "k1 " + base64.StdEncoding.EncodeToString([]byte("short")) + "\n",
		"duplicate ID": "k1 " + key64(1) + "\nk1 " + key64(2) + "\n",
		"bad ID":       "k/1 " + key64(1) + "\n",
		"three fields": "k1 " + key64(1) + " extra\n",
		"empty":        "# nothing\n",
	}
	wantKeyErr := map[string]string{
		"not base64":   "line 1: key k1 is not base64",
		"short":        "line 1: key k1 is 5 bytes; AES-256 needs 32",
		"duplicate ID": `line 2: key ID "k1" is listed twice`,
		"bad ID":       `line 1: key ID "k/1" is not 1 to 32 letters, digits, '.', '_' or '-'`,
		"three fields": `line 1: want "ID BASE64-OF-32-BYTES"`,
		"empty":        "no key in the file",
	}
	tests := []struct {
		name     string
		set      map[string]string
		want     []string // problems
		wantWarn []string
		check    func(t *testing.T, c *Config)
	}{
		{name: "off by default", check: func(t *testing.T, c *Config) {
			if c.Fleet.Enabled() || c.Credentials[0].FleetLocal {
				t.Error("fleet mode on without a URL")
			}
		}},
		{
			name: "on, URL from a file, defaults",
			set:  map[string]string{VarFleetRedisURL + "_FILE": urlFile, VarFleetKeyFile: keys},
			check: func(t *testing.T, c *Config) {
				f := c.Fleet
				if !f.Enabled() || f.Name != "default" || f.LockTTL != 15*time.Second || f.KeyFile != keys || f.RedisURL.File != urlFile {
					t.Errorf("fleet = %+v", f)
				}
				ks, err := ReadKeyring(f.KeyFile)
				if err != nil || len(ks) != 2 || ks[0].ID != "k2" || ks[1].Secret[0] != 1 {
					t.Errorf("keyring = %v, %v; want k2 first, then k1 (unpadded base64 accepted)", ks, err)
				}
			},
		},
		{
			name: "all settings, one credential kept local",
			set: map[string]string{
				VarFleetRedisURL: "unix:///run/redis/redis.sock?db=3", VarFleetKeyFile: keys,
				VarFleetName: "shop-7", VarFleetLockTTL: "5s", "SESSIOND_POS_FLEET": "false",
			},
			check: func(t *testing.T, c *Config) {
				if c.Fleet.Name != "shop-7" || c.Fleet.LockTTL != 5*time.Second || !c.Credentials[0].FleetLocal {
					t.Errorf("fleet = %+v, pos local = %v", c.Fleet, c.Credentials[0].FleetLocal)
				}
			},
		},
		{
			name: "fleet settings without the URL",
			set:  map[string]string{VarFleetKeyFile: keys, VarFleetName: "x", VarFleetLockTTL: "5s", "SESSIOND_POS_FLEET": "false"},
			want: []string{
				"SESSIOND_FLEET_NAME: set without SESSIOND_FLEET_REDIS_URL (fleet mode is off)",
				"SESSIOND_FLEET_KEY_FILE: set without SESSIOND_FLEET_REDIS_URL (fleet mode is off)",
				"SESSIOND_FLEET_LOCK_TTL: set without SESSIOND_FLEET_REDIS_URL (fleet mode is off)",
			},
			wantWarn: []string{"SESSIOND_POS_FLEET: has no effect without SESSIOND_FLEET_REDIS_URL"},
		},
		{
			name: "both URL forms, no key file",
			set:  map[string]string{VarFleetRedisURL: "redis://h", VarFleetRedisURL + "_FILE": urlFile},
			want: []string{
				"SESSIOND_FLEET_REDIS_URL: set only one of SESSIOND_FLEET_REDIS_URL and SESSIOND_FLEET_REDIS_URL_FILE",
				"SESSIOND_FLEET_KEY_FILE: required with SESSIOND_FLEET_REDIS_URL: the keyring that encrypts the shared sessions",
			},
		},
		{
			name: "bad values",
			set: map[string]string{
				VarFleetRedisURL: "http://u:" + secretRedisPW + "@h/", VarFleetKeyFile: dir + "/missing",
				VarFleetName: "a/b", VarFleetLockTTL: "500ms", "SESSIOND_POS_FLEET": "maybe",
			},
			want: []string{
				"SESSIOND_FLEET_REDIS_URL: must be a redis://, rediss:// or unix:// URL",
				`SESSIOND_FLEET_NAME: "a/b" is not 1 to 32 letters, digits, '.', '_' or '-'`,
				"SESSIOND_FLEET_KEY_FILE: open " + dir + "/missing: no such file or directory",
				`SESSIOND_FLEET_LOCK_TTL: "500ms" is shorter than the minimum 1s`,
				`SESSIOND_POS_FLEET: "maybe" is not true or false`,
			},
		},
		{
			name: "malformed URLs never echo the password",
			set:  map[string]string{VarFleetRedisURL: "redis://u:" + secretRedisPW + "@h:6379/notadb", VarFleetKeyFile: keys},
			want: []string{`SESSIOND_FLEET_REDIS_URL: invalid database number: "notadb"`},
		},
		{
			name: "unparsable URL",
			set:  map[string]string{VarFleetRedisURL: "redis://u:" + secretRedisPW + "@h:port/", VarFleetKeyFile: keys},
			want: []string{`SESSIOND_FLEET_REDIS_URL: not a valid URL: invalid port ":port" after host`},
		},
		{
			name: "unix URL without a path",
			set:  map[string]string{VarFleetRedisURL: "unix://", VarFleetKeyFile: keys},
			want: []string{"SESSIOND_FLEET_REDIS_URL: has no socket path (unix:///path/to/redis.sock)"},
		},
	}
	for name, content := range badKeys {
		tests = append(tests, struct {
			name     string
			set      map[string]string
			want     []string
			wantWarn []string
			check    func(t *testing.T, c *Config)
		}{
			name: "key file " + name,
			set:  map[string]string{VarFleetRedisURL: "redis://h", VarFleetKeyFile: writeFile(t, dir, "bad-"+strings.ReplaceAll(name, " ", "-"), content)},
			want: []string{"SESSIOND_FLEET_KEY_FILE: " + dir + "/bad-" + strings.ReplaceAll(name, " ", "-") + ": " + wantKeyErr[name]},
		})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := minimalEnv()
			for k, v := range tc.set {
				m[k] = v
			}
			c, err := Load(environ(m))
			var got, warn []string
			var ve *ValidationError
			switch {
			case errors.As(err, &ve):
				for _, p := range ve.Problems {
					got = append(got, p.String())
				}
				warn = ve.Warnings
			case err != nil:
				t.Fatal(err)
			default:
				warn = c.Warnings
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if !slices.Equal(warn, tc.wantWarn) {
				t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(warn, "\n"), strings.Join(tc.wantWarn, "\n"))
			}
			if err != nil && strings.Contains(err.Error(), secretRedisPW) {
				t.Error("an error shows the Redis password")
			}
			if tc.check != nil && c != nil {
				tc.check(t, c)
			}
		})
	}
}

// check-config shows fleet mode on one line, the Redis password redacted,
// no key material, and which credentials are kept local.
func TestCheckConfigFleet(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keys := writeFile(t, dir, "keys", "k2 "+key64(2)+"\nk1 "+key64(1)+"\n")
	m := minimalEnv()
	m[VarFleetRedisURL] = "rediss://sessiond:" + secretRedisPW + "@redis.example:6380/0"
	m[VarFleetKeyFile] = keys
	m["SESSIOND_POS_FLEET"] = "false"
	var out strings.Builder
	if err := CheckConfig(environ(m), &out); err != nil {
		t.Fatal(err)
	}
	want := "pos: kind=password clientCode=123456 user=api-user secret=inline sessionLength=3600s fleet=local\n" +
		"fleet: name=default redis=inline rediss://sessiond:xxxxx@redis.example:6380/0 keyFile=" + keys + " keys=2 (encrypting with k2) lockTTL=15s\n"
	if out.String() != want {
		t.Errorf("check-config:\n%s\nwant:\n%s", out.String(), want)
	}
	if strings.Contains(out.String(), secretRedisPW) || strings.Contains(out.String(), key64(2)) {
		t.Error("check-config shows a secret")
	}
	k := Key{ID: "k1", Secret: [32]byte{1, 2, 3}}
	for _, s := range []string{k.String(), k.GoString()} {
		if strings.Contains(s, "1, 2, 3") || strings.Contains(s, "[1 2 3") {
			t.Errorf("a key prints its secret: %s", s)
		}
	}
}
