package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Secret values used by the tests; none may ever appear in output.
const (
	secretPassword = "hunter2-pw-SECRET"
	secretPIN      = "4711-pin-SECRET"
	secretToken    = "eyJ-token-SECRET"
	secretInFile   = "file-content-SECRET"
)

var testSecrets = []string{secretPassword, secretPIN, secretToken, secretInFile}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// environ turns a map into os.Environ form, sorted for stable tests.
func environ(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

// minimalEnv is the smallest valid configuration: one password credential.
func minimalEnv() map[string]string {
	return map[string]string{
		"SESSIOND_CREDENTIALS":     "pos",
		"SESSIOND_POS_CLIENT_CODE": "123456",
		"SESSIOND_POS_USERNAME":    "api-user",
		"SESSIOND_POS_PASSWORD":    secretPassword,
	}
}

func mustLoad(t *testing.T, env []string) *Config {
	t.Helper()
	c, err := Load(env)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	c := mustLoad(t, environ(minimalEnv()))
	if c.Socket != DefaultSocket || c.SocketMode != 0o660 || c.HTTPAddr != "" || c.HTTPSessions ||
		c.LogLevel != "info" || c.LogFormat != "json" || c.APIURL != DefaultAPIURL ||
		c.EndpointCooldown != 30*time.Second || c.RefreshFraction != 0.67 ||
		c.ExpiryMargin != 60*time.Second || c.ProxyConcurrency != 10 || c.EnvFile != "" {
		t.Errorf("globals not defaulted: %+v", c)
	}
	if len(c.Credentials) != 1 {
		t.Fatalf("credentials = %d, want 1", len(c.Credentials))
	}
	want := Credential{
		Name: "pos", Kind: KindPassword, ClientCode: "123456", APIURL: DefaultAPIURL,
		Username: "api-user", Password: Secret{Value: secretPassword, Var: "SESSIOND_POS_PASSWORD"},
		SessionLength: 3600, SinkMode: 0o640, RotatePassword: RotateNever,
	}
	if !c.Credentials[0].Equal(want) {
		t.Errorf("credential = %+v\nwant %+v", c.Credentials[0], want)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings = %q", c.Warnings)
	}
}

func TestLoadFullConfiguration(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pw := writeFile(t, dir, "pos.password", secretInFile+"\n")
	tok := writeFile(t, dir, "idp.token", secretInFile)
	if err := os.Mkdir(filepath.Join(dir, "pos"), 0o700); err != nil { // the sink's directory
		t.Fatal(err)
	}
	env := map[string]string{
		"SESSIOND_CREDENTIALS":       " pos, cashier ,floor,idp,sso",
		"SESSIOND_SOCKET":            filepath.Join(dir, "s.sock"),
		"SESSIOND_SOCKET_MODE":       "0600",
		"SESSIOND_HTTP_ADDR":         "[::1]:9090",
		"SESSIOND_HTTP_SESSIONS":     "true",
		"SESSIOND_LOG_LEVEL":         "DEBUG",
		"SESSIOND_LOG_FORMAT":        "console",
		"SESSIOND_API_URL":           "http://127.0.0.1:8080/{clientCode}/api/",
		"SESSIOND_ENDPOINT_COOLDOWN": "2m",
		"SESSIOND_REFRESH_FRACTION":  "0.5",
		"SESSIOND_EXPIRY_MARGIN":     "1s",
		"SESSIOND_PROXY_CONCURRENCY": "100",

		"SESSIOND_POS_CLIENT_CODE":   "123456",
		"SESSIOND_POS_USERNAME":      "api-user",
		"SESSIOND_POS_PASSWORD_FILE": pw,
		"SESSIOND_POS_API_URL":       "https://onprem.example/{clientCode}/",
		"SESSIOND_POS_ALLOW_UIDS":    "1000, 1001",
		"SESSIOND_POS_ALLOW_GIDS":    "0",
		"SESSIOND_POS_SINK_FILE":     dir + "/pos/../pos/key",
		"SESSIOND_POS_SINK_MODE":     "0600",

		"SESSIOND_CASHIER_KIND":           "pin",
		"SESSIOND_CASHIER_PARENT":         "pos",
		"SESSIOND_CASHIER_PIN":            secretPIN,
		"SESSIOND_CASHIER_SESSION_LENGTH": "86400",

		// A PIN login on top of another PIN login: the root is still pos.
		"SESSIOND_FLOOR_KIND":   "pin",
		"SESSIOND_FLOOR_PARENT": "cashier",
		"SESSIOND_FLOOR_PIN":    secretPIN,

		"SESSIOND_IDP_KIND":           "identity",
		"SESSIOND_IDP_CLIENT_CODE":    "ab12",
		"SESSIOND_IDP_TOKEN_FILE":     tok,
		"SESSIOND_IDP_SESSION_LENGTH": "5",

		"SESSIOND_SSO_KIND":        "oauth",
		"SESSIOND_SSO_CLIENT_CODE": "777",
		"SESSIOND_SSO_TOKEN":       secretToken,
	}
	c := mustLoad(t, environ(env))
	if c.SocketMode != 0o600 || c.HTTPAddr != "[::1]:9090" || !c.HTTPSessions || c.LogLevel != "debug" ||
		c.LogFormat != "console" || c.APIURL != "http://127.0.0.1:8080/{clientCode}/api/" ||
		c.EndpointCooldown != 2*time.Minute || c.RefreshFraction != 0.5 || c.ExpiryMargin != time.Second ||
		c.ProxyConcurrency != 100 {
		t.Errorf("globals = %+v", c)
	}
	var names []string
	for _, cr := range c.Credentials {
		names = append(names, cr.Name)
	}
	if !slices.Equal(names, []string{"pos", "cashier", "floor", "idp", "sso"}) {
		t.Fatalf("names = %q, want them in SESSIOND_CREDENTIALS order", names)
	}
	pos, cashier, floor, idp, sso := c.Credentials[0], c.Credentials[1], c.Credentials[2], c.Credentials[3], c.Credentials[4]
	if pos.Password.File != pw || pos.Password.Value != "" || pos.APIURL != "https://onprem.example/{clientCode}/" ||
		!slices.Equal(pos.AllowUIDs, []uint32{1000, 1001}) || !slices.Equal(pos.AllowGIDs, []uint32{0}) ||
		pos.SinkFile != filepath.Join(dir, "pos", "key") || pos.SinkMode != 0o600 {
		t.Errorf("pos = %+v", pos)
	}
	if got, err := pos.Password.Read(); err != nil || got != secretInFile {
		t.Errorf("pos password file reads %q, %v", got, err)
	}
	for _, pin := range []Credential{cashier, floor} {
		if pin.Kind != KindPIN || pin.ClientCode != "123456" || pin.APIURL != pos.APIURL {
			t.Errorf("%s: client code and API URL not copied from root pos: %+v", pin.Name, pin)
		}
	}
	if cashier.SessionLength != 86400 || cashier.PIN.Value != secretPIN || cashier.PIN.Var != "SESSIOND_CASHIER_PIN" {
		t.Errorf("cashier = %+v", cashier)
	}
	if idp.Kind != KindIdentity || idp.ClientCode != "ab12" || idp.Token.File != tok || idp.SessionLength != 5 ||
		idp.APIURL != c.APIURL {
		t.Errorf("idp = %+v", idp)
	}
	if sso.Kind != KindOAuth || sso.Token.Value != secretToken || sso.Token.Var != "SESSIOND_SSO_TOKEN" {
		t.Errorf("sso = %+v", sso)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings = %q", c.Warnings)
	}
}

// TestCheckConfig runs check-config over good and bad environments and
// checks the exact lines an operator sees.
func TestCheckConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pwFile := writeFile(t, dir, "pw", secretInFile+"\n")
	emptyFile := writeFile(t, dir, "empty", "\n \n")
	bigFile := writeFile(t, dir, "big", strings.Repeat(secretInFile, 5000))
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")

	tests := []struct {
		name string
		set  map[string]string // applied over minimalEnv; "" unsets
		want []string          // exact output lines
	}{
		{
			name: "good",
			want: []string{"pos: kind=password clientCode=123456 user=api-user secret=inline sessionLength=3600s"},
		},
		{
			name: "good with file secret, pin child and extras",
			set: map[string]string{
				"SESSIOND_CREDENTIALS":       "pos,cashier",
				"SESSIOND_POS_PASSWORD":      "",
				"SESSIOND_POS_PASSWORD_FILE": pwFile,
				"SESSIOND_POS_ALLOW_UIDS":    "0,33",
				"SESSIOND_POS_SINK_FILE":     "/run/pos.key",
				"SESSIOND_CASHIER_KIND":      "pin",
				"SESSIOND_CASHIER_PARENT":    "pos",
				"SESSIOND_CASHIER_PIN":       secretPIN,
				"SESSIOND_CASHIER_API_URL":   "https://ignored.example/",
			},
			want: []string{
				"warning: SESSIOND_CASHIER_API_URL: not used by kind pin; ignored",
				"pos: kind=password clientCode=123456 user=api-user secret=file:" + pwFile + " sessionLength=3600s allowUIDs=0,33 sink=/run/pos.key sinkMode=0640",
				"cashier: kind=pin parent=pos clientCode=123456 secret=inline sessionLength=3600s",
			},
		},
		{
			name: "automatic rotation of a password file",
			set: map[string]string{
				"SESSIOND_POS_PASSWORD":        "",
				"SESSIOND_POS_PASSWORD_FILE":   pwFile,
				"SESSIOND_POS_ROTATE_PASSWORD": "Expired",
			},
			want: []string{"pos: kind=password clientCode=123456 user=api-user secret=file:" + pwFile + " sessionLength=3600s rotatePassword=expired"},
		},
		{
			name: "automatic rotation of a password from the environment",
			set:  map[string]string{"SESSIOND_POS_ROTATE_PASSWORD": "expired"},
			want: []string{"SESSIOND_POS_ROTATE_PASSWORD: expired needs SESSIOND_POS_PASSWORD_FILE: a password given in SESSIOND_POS_PASSWORD cannot be rewritten"},
		},
		{
			name: "unknown rotation policy",
			set:  map[string]string{"SESSIOND_POS_ROTATE_PASSWORD": "daily"},
			want: []string{`SESSIOND_POS_ROTATE_PASSWORD: "daily" is not one of never, expired`},
		},
		{
			name: "rotation on a pin credential",
			set: map[string]string{
				"SESSIOND_CREDENTIALS": "pos,cashier", "SESSIOND_CASHIER_KIND": "pin",
				"SESSIOND_CASHIER_PARENT": "pos", "SESSIOND_CASHIER_PIN": secretPIN,
				"SESSIOND_CASHIER_ROTATE_PASSWORD": "never",
			},
			want: []string{
				"warning: SESSIOND_CASHIER_ROTATE_PASSWORD: not used by kind pin; ignored",
				"pos: kind=password clientCode=123456 user=api-user secret=inline sessionLength=3600s",
				"cashier: kind=pin parent=pos clientCode=123456 secret=inline sessionLength=3600s",
			},
		},
		{
			name: "missing password",
			set:  map[string]string{"SESSIOND_POS_PASSWORD": ""},
			want: []string{"SESSIOND_POS_PASSWORD: required for kind password (or SESSIOND_POS_PASSWORD_FILE)"},
		},
		{
			name: "both password and password file",
			set:  map[string]string{"SESSIOND_POS_PASSWORD_FILE": pwFile},
			want: []string{"SESSIOND_POS_PASSWORD: set only one of SESSIOND_POS_PASSWORD and SESSIOND_POS_PASSWORD_FILE"},
		},
		{
			name: "unknown kind",
			set:  map[string]string{"SESSIOND_POS_KIND": "magic"},
			want: []string{`SESSIOND_POS_KIND: "magic" is not one of password, pin, identity, oauth`},
		},
		{
			name: "parent unknown",
			set: map[string]string{
				"SESSIOND_CREDENTIALS": "pos,cashier", "SESSIOND_CASHIER_KIND": "pin",
				"SESSIOND_CASHIER_PARENT": "till", "SESSIOND_CASHIER_PIN": secretPIN,
			},
			want: []string{`SESSIOND_CASHIER_PARENT: "till" is not in SESSIOND_CREDENTIALS`},
		},
		{
			name: "parent missing",
			set: map[string]string{
				"SESSIOND_CREDENTIALS": "pos,cashier", "SESSIOND_CASHIER_KIND": "pin", "SESSIOND_CASHIER_PIN": secretPIN,
			},
			want: []string{"SESSIOND_CASHIER_PARENT: required for kind pin: the credential whose session the PIN login switches"},
		},
		{
			name: "parent cycle a to b to a",
			set: map[string]string{
				"SESSIOND_CREDENTIALS": "pos,a,b",
				"SESSIOND_A_KIND":      "pin", "SESSIOND_A_PARENT": "b", "SESSIOND_A_PIN": secretPIN,
				"SESSIOND_B_KIND": "pin", "SESSIOND_B_PARENT": "a", "SESSIOND_B_PIN": secretPIN,
			},
			want: []string{
				"SESSIOND_A_PARENT: parent chain a → b → a is a cycle",
				"SESSIOND_B_PARENT: parent chain b → a → b is a cycle",
			},
		},
		{
			name: "parent is itself",
			set: map[string]string{
				"SESSIOND_CREDENTIALS": "pos,a",
				"SESSIOND_A_KIND":      "pin", "SESSIOND_A_PARENT": "a", "SESSIOND_A_PIN": secretPIN,
			},
			want: []string{"SESSIOND_A_PARENT: parent chain a → a is a cycle"},
		},
		{
			name: "session length zero",
			set:  map[string]string{"SESSIOND_POS_SESSION_LENGTH": "0"},
			want: []string{`SESSIOND_POS_SESSION_LENGTH: "0" is not a whole number of seconds from 1 to 86400`},
		},
		{
			name: "session length too long",
			set:  map[string]string{"SESSIOND_POS_SESSION_LENGTH": "86401"},
			want: []string{`SESSIOND_POS_SESSION_LENGTH: "86401" is not a whole number of seconds from 1 to 86400`},
		},
		{
			name: "session length too short to refresh without spinning",
			set:  map[string]string{"SESSIOND_POS_SESSION_LENGTH": "4"},
			want: []string{`SESSIOND_POS_SESSION_LENGTH: 4 s is too short to keep alive: below 5 s the safety margin (at least 1 s, Erply's clock has whole seconds) leaves no time between refreshes; use 5 or more`},
		},
		{
			name: "session length not a number",
			set:  map[string]string{"SESSIOND_POS_SESSION_LENGTH": "abc"},
			want: []string{`SESSIOND_POS_SESSION_LENGTH: "abc" is not a whole number of seconds from 1 to 86400`},
		},
		{
			name: "password file missing",
			set:  map[string]string{"SESSIOND_POS_PASSWORD": "", "SESSIOND_POS_PASSWORD_FILE": missing},
			want: []string{"SESSIOND_POS_PASSWORD_FILE: open " + missing + ": no such file or directory"},
		},
		{
			name: "password file is a directory",
			set:  map[string]string{"SESSIOND_POS_PASSWORD": "", "SESSIOND_POS_PASSWORD_FILE": dir},
			want: []string{"SESSIOND_POS_PASSWORD_FILE: " + dir + " is a directory"},
		},
		{
			name: "password file is a FIFO (refused without blocking)",
			set:  map[string]string{"SESSIOND_POS_PASSWORD": "", "SESSIOND_POS_PASSWORD_FILE": fifo},
			want: []string{"SESSIOND_POS_PASSWORD_FILE: " + fifo + " is not a regular file"},
		},
		{
			name: "password file empty",
			set:  map[string]string{"SESSIOND_POS_PASSWORD": "", "SESSIOND_POS_PASSWORD_FILE": emptyFile},
			want: []string{"SESSIOND_POS_PASSWORD_FILE: " + emptyFile + " is empty"},
		},
		{
			name: "password file too big",
			set:  map[string]string{"SESSIOND_POS_PASSWORD": "", "SESSIOND_POS_PASSWORD_FILE": bigFile},
			want: []string{"SESSIOND_POS_PASSWORD_FILE: " + bigFile + " is larger than 64 KiB"},
		},
		{
			name: "socket mode not octal",
			set:  map[string]string{"SESSIOND_SOCKET_MODE": "999"},
			want: []string{`SESSIOND_SOCKET_MODE: "999" is not an octal file mode such as 0660`},
		},
		{
			name: "socket mode symbolic",
			set:  map[string]string{"SESSIOND_SOCKET_MODE": "rw"},
			want: []string{`SESSIOND_SOCKET_MODE: "rw" is not an octal file mode such as 0660`},
		},
		{
			name: "socket mode beyond permission bits",
			set:  map[string]string{"SESSIOND_SOCKET_MODE": "4755"},
			want: []string{`SESSIOND_SOCKET_MODE: "4755" is not an octal file mode such as 0660`},
		},
		{
			name: "socket path too long for a Unix socket",
			set:  map[string]string{"SESSIOND_SOCKET": "/" + strings.Repeat("s", 107)},
			want: []string{"SESSIOND_SOCKET: path is 108 bytes; a Unix socket path must be at most 107"},
		},
		{
			name: "bad name",
			set:  map[string]string{"SESSIOND_CREDENTIALS": "pos,POS!"},
			want: []string{`SESSIOND_CREDENTIALS: "POS!" is not a valid name (lower-case letters, digits and _)`},
		},
		{
			name: "duplicate and empty names",
			set:  map[string]string{"SESSIOND_CREDENTIALS": "pos,,pos"},
			want: []string{
				"SESSIOND_CREDENTIALS: empty name in the list",
				`SESSIOND_CREDENTIALS: "pos" is listed twice`,
			},
		},
		{
			name: "no credentials",
			set:  map[string]string{"SESSIOND_CREDENTIALS": ""},
			want: []string{
				"warning: SESSIOND_POS_CLIENT_CODE: credential \"pos\" is not in SESSIOND_CREDENTIALS; ignored",
				"warning: SESSIOND_POS_PASSWORD: credential \"pos\" is not in SESSIOND_CREDENTIALS; ignored",
				"warning: SESSIOND_POS_USERNAME: credential \"pos\" is not in SESSIOND_CREDENTIALS; ignored",
				"SESSIOND_CREDENTIALS: required: a comma-separated list of credential names such as pos,backoffice",
			},
		},
		{
			name: "HTTP_ADDR on every interface",
			set:  map[string]string{"SESSIOND_HTTP_ADDR": ":9090"},
			want: []string{`SESSIOND_HTTP_ADDR: ":9090" is not a loopback address (127.0.0.1, ::1 or localhost): the TCP listener has no caller checks`},
		},
		{
			name: "HTTP_ADDR public",
			set:  map[string]string{"SESSIOND_HTTP_ADDR": "10.0.0.1:9090"},
			want: []string{`SESSIOND_HTTP_ADDR: "10.0.0.1:9090" is not a loopback address (127.0.0.1, ::1 or localhost): the TCP listener has no caller checks`},
		},
		{
			name: "HTTP_ADDR without port",
			set:  map[string]string{"SESSIOND_HTTP_ADDR": "127.0.0.1"},
			want: []string{`SESSIOND_HTTP_ADDR: "127.0.0.1" is not a host:port address such as 127.0.0.1:9090`},
		},
		{
			name: "HTTP_ADDR localhost is fine",
			set:  map[string]string{"SESSIOND_HTTP_ADDR": "localhost:9090"},
			want: []string{"pos: kind=password clientCode=123456 user=api-user secret=inline sessionLength=3600s"},
		},
		{
			name: "API URLs",
			set: map[string]string{
				"SESSIOND_API_URL":     "ftp://{clientCode}.example/",
				"SESSIOND_POS_API_URL": "https://user:" + secretPassword + "@%zz/",
			},
			want: []string{
				"SESSIOND_API_URL: must be an http:// or https:// URL",
				`SESSIOND_POS_API_URL: not a valid URL: invalid URL escape "%zz"`,
			},
		},
		{
			name: "refresh policy and limits out of range",
			set: map[string]string{
				"SESSIOND_REFRESH_FRACTION":  "0.99",
				"SESSIOND_EXPIRY_MARGIN":     "500ms",
				"SESSIOND_ENDPOINT_COOLDOWN": "soon",
				"SESSIOND_PROXY_CONCURRENCY": "0",
				"SESSIOND_HTTP_SESSIONS":     "maybe",
				"SESSIOND_LOG_LEVEL":         "verbose",
				"SESSIOND_LOG_FORMAT":        "xml",
			},
			want: []string{
				`SESSIOND_HTTP_SESSIONS: "maybe" is not true or false`,
				`SESSIOND_LOG_LEVEL: "verbose" is not one of debug, info, warn, error`,
				`SESSIOND_LOG_FORMAT: "xml" is not one of json, console`,
				`SESSIOND_ENDPOINT_COOLDOWN: "soon" is not a duration such as 30s`,
				`SESSIOND_REFRESH_FRACTION: "0.99" is not a number from 0.1 to 0.95`,
				`SESSIOND_EXPIRY_MARGIN: "500ms" is shorter than the minimum 1s`,
				`SESSIOND_PROXY_CONCURRENCY: "0" is not a whole number from 1 to 100`,
			},
		},
		{
			name: "several problems at once, all reported",
			set: map[string]string{
				"SESSIOND_CREDENTIALS":        "pos,idp,cashier,Bad",
				"SESSIOND_SOCKET_MODE":        "rw",
				"SESSIOND_POS_CLIENT_CODE":    "",
				"SESSIOND_POS_USERNAME":       "",
				"SESSIOND_POS_SESSION_LENGTH": "-5",
				"SESSIOND_POS_ALLOW_UIDS":     "1000,-1",
				"SESSIOND_POS_SINK_FILE":      "relative/key",
				"SESSIOND_IDP_KIND":           "identity",
				"SESSIOND_IDP_CLIENT_CODE":    "12-34",
				"SESSIOND_IDP_ALLOW_GIDS":     "x",
				"SESSIOND_CASHIER_KIND":       "pin",
				"SESSIOND_CASHIER_PARENT":     "nobody",
			},
			want: []string{
				`SESSIOND_SOCKET_MODE: "rw" is not an octal file mode such as 0660`,
				`SESSIOND_CREDENTIALS: "Bad" is not a valid name (lower-case letters, digits and _)`,
				"SESSIOND_POS_CLIENT_CODE: required for kind password",
				"SESSIOND_POS_USERNAME: required for kind password",
				`SESSIOND_POS_SESSION_LENGTH: "-5" is not a whole number of seconds from 1 to 86400`,
				`SESSIOND_POS_ALLOW_UIDS: "-1" is not a user id (a non-negative integer); give a comma-separated list`,
				`SESSIOND_POS_SINK_FILE: "relative/key" is not an absolute path`,
				`SESSIOND_IDP_CLIENT_CODE: "12-34" is not a client code (letters and digits)`,
				"SESSIOND_IDP_TOKEN_FILE: required for kind identity (or SESSIOND_IDP_TOKEN)",
				`SESSIOND_IDP_ALLOW_GIDS: "x" is not a group id (a non-negative integer); give a comma-separated list`,
				"SESSIOND_CASHIER_PIN: required for kind pin (or SESSIOND_CASHIER_PIN_FILE)",
				`SESSIOND_CASHIER_PARENT: "nobody" is not in SESSIOND_CREDENTIALS`,
			},
		},
		{
			name: "two credentials writing one sink file",
			set: map[string]string{
				"SESSIOND_CREDENTIALS":   "pos,other",
				"SESSIOND_POS_SINK_FILE": "/run/k",
				"SESSIOND_OTHER_KIND":    "oauth", "SESSIOND_OTHER_CLIENT_CODE": "1", "SESSIOND_OTHER_TOKEN": secretToken,
				"SESSIOND_OTHER_SINK_FILE": "/run/./k",
			},
			want: []string{"SESSIOND_OTHER_SINK_FILE: same file as SESSIOND_POS_SINK_FILE"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := minimalEnv()
			for k, v := range tc.set {
				m[k] = v
			}
			var out strings.Builder
			err := CheckConfig(environ(m), &out)
			got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if !slices.Equal(got, tc.want) {
				t.Errorf("output:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			for _, s := range testSecrets {
				if strings.Contains(out.String(), s) {
					t.Errorf("output contains secret %q", s)
				}
			}
			wantFail := slices.ContainsFunc(tc.want, func(l string) bool { return !strings.HasPrefix(l, "warning: ") && strings.HasPrefix(l, "SESSIOND_") })
			if !wantFail {
				if err != nil {
					t.Fatalf("CheckConfig = %v, want nil", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("CheckConfig error = %T %v, want *ValidationError", err, err)
			}
			// Load reports the same problems, and its Error is exactly the printed lines.
			_, lerr := Load(environ(m))
			if lerr == nil || lerr.Error() != ve.Error() {
				t.Errorf("Load error = %v, want %v", lerr, ve)
			}
			var problems []string
			for _, l := range tc.want {
				if !strings.HasPrefix(l, "warning: ") {
					problems = append(problems, l)
				}
			}
			if ve.Error() != strings.Join(problems, "\n") {
				t.Errorf("Error() = %q, want the problem lines", ve.Error())
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	t.Parallel()
	m := minimalEnv()
	m["SESSIOND_POS_PASWORD"] = "typo"           // misspelt suffix
	m["SESSIOND_BACKOFFICE_USERNAME"] = "x"      // credential not listed
	m["SESSIOND_POS_PIN"] = secretPIN            // not used by kind password
	m["SESSIOND_POS_SINK_MODE"] = "0600"         // no sink file
	m["SESSIOND_HTTP_SESSIONS"] = "1"            // no HTTP_ADDR
	m["SESSIOND_LOGLEVEL"] = "debug"             // misspelt global
	m["OTHER_PROGRAM_VAR"] = "not ours, ignored" // other prefixes are none of our business
	c := mustLoad(t, environ(m))
	want := []string{
		"SESSIOND_HTTP_SESSIONS: has no effect without SESSIOND_HTTP_ADDR",
		"SESSIOND_POS_PIN: not used by kind password; ignored",
		"SESSIOND_POS_SINK_MODE: has no effect without SESSIOND_POS_SINK_FILE",
		`SESSIOND_BACKOFFICE_USERNAME: credential "backoffice" is not in SESSIOND_CREDENTIALS; ignored`,
		"SESSIOND_LOGLEVEL: unknown variable; ignored",
		"SESSIOND_POS_PASWORD: unknown variable; ignored",
	}
	if !slices.Equal(c.Warnings, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(c.Warnings, "\n"), strings.Join(want, "\n"))
	}
}

func TestLoadFirstDuplicateWinsAndIgnoresJunk(t *testing.T) {
	t.Parallel()
	env := append(environ(minimalEnv()), "SESSIOND_POS_CLIENT_CODE=999", "NOEQUALS")
	c := mustLoad(t, env)
	if got := c.Credentials[0].ClientCode; got != "123456" {
		t.Errorf("client code = %q, want the first occurrence as os.Getenv does", got)
	}
}

func TestEnvFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "env", `# /etc/erply-sessiond/env
SESSIOND_CREDENTIALS=pos,backoffice
SESSIOND_LOG_LEVEL="warn"

SESSIOND_BACKOFFICE_CLIENT_CODE=654321
SESSIOND_BACKOFFICE_USERNAME='back office'
SESSIOND_BACKOFFICE_PASSWORD="pa ss\"word # not a comment"
; another comment
SESSIOND_POS_SESSION_LENGTH=
`)
	m := minimalEnv()
	m["SESSIOND_ENV_FILE"] = file
	m["SESSIOND_LOG_LEVEL"] = "error"
	m["SESSIOND_POS_SESSION_LENGTH"] = "60" // the file's empty value wins and means "unset"
	c := mustLoad(t, environ(m))
	if c.EnvFile != file {
		t.Errorf("EnvFile = %q", c.EnvFile)
	}
	if c.LogLevel != "warn" {
		t.Errorf("LogLevel = %q, want the file's value over the environment's", c.LogLevel)
	}
	if len(c.Credentials) != 2 {
		t.Fatalf("credentials = %+v", c.Credentials)
	}
	pos, bo := c.Credentials[0], c.Credentials[1]
	if pos.Password.Value != secretPassword || pos.SessionLength != 3600 {
		t.Errorf("pos = %+v, want the environment's password and the default session length", pos)
	}
	if bo.Username != "back office" || bo.Password.Value != `pa ss"word # not a comment` || bo.ClientCode != "654321" {
		t.Errorf("backoffice = %+v", bo)
	}
}

func TestEnvFileProblems(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name, content string
		path          string // overrides the written file
		want          []string
		wantWarn      []string
	}{
		{
			name:    "bad lines name their numbers, never their text",
			content: "SESSIOND_LOG_LEVEL=debug\n" + secretInFile + "\nexport SESSIOND_X=1\n\nSESSIOND_POS_PIN=\"" + secretPIN + "\n",
			want: []string{
				"SESSIOND_ENV_FILE: {file}: line 2: expected KEY=VALUE",
				`SESSIOND_ENV_FILE: {file}: line 3: "export" is not part of systemd's EnvironmentFile= syntax (systemd ignores such a line); remove it`,
				"SESSIOND_ENV_FILE: {file}: line 5: unterminated double quote",
			},
		},
		{
			name: "missing file",
			path: filepath.Join(dir, "nope"),
			want: []string{"SESSIOND_ENV_FILE: open {file}: no such file or directory"},
		},
		{
			name:    "file cannot redirect to another file",
			content: "SESSIOND_ENV_FILE=/elsewhere\n",
			wantWarn: []string{
				"SESSIOND_ENV_FILE: set inside the env file {file}; ignored there (only the process environment names the env file)",
			},
		},
		{
			name:    "problems in the merged configuration keep the file's warnings",
			content: "SESSIOND_ENV_FILE=/elsewhere\nSESSIOND_POS_KIND=pin\n",
			want: []string{
				"SESSIOND_POS_PARENT: required for kind pin: the credential whose session the PIN login switches",
				"SESSIOND_POS_PIN: required for kind pin (or SESSIOND_POS_PIN_FILE)",
			},
			wantWarn: []string{
				"SESSIOND_ENV_FILE: set inside the env file {file}; ignored there (only the process environment names the env file)",
				"SESSIOND_POS_CLIENT_CODE: not used by kind pin; ignored",
				"SESSIOND_POS_USERNAME: not used by kind pin; ignored",
				"SESSIOND_POS_PASSWORD: not used by kind pin; ignored",
			},
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := tc.path
			if path == "" {
				path = writeFile(t, dir, "env"+string(rune('a'+i)), tc.content)
			}
			m := minimalEnv()
			m["SESSIOND_ENV_FILE"] = path
			c, err := Load(environ(m))
			expand := func(ls []string) []string {
				out := make([]string, len(ls))
				for i, l := range ls {
					out[i] = strings.ReplaceAll(l, "{file}", path)
				}
				return out
			}
			var gotProblems, gotWarn []string
			var ve *ValidationError
			switch {
			case errors.As(err, &ve):
				for _, p := range ve.Problems {
					gotProblems = append(gotProblems, p.String())
				}
				gotWarn = ve.Warnings
			case err != nil:
				t.Fatalf("Load error %T %v", err, err)
			default:
				gotWarn = c.Warnings
			}
			if !slices.Equal(gotProblems, expand(tc.want)) {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(gotProblems, "\n"), strings.Join(expand(tc.want), "\n"))
			}
			if !slices.Equal(gotWarn, expand(tc.wantWarn)) {
				t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(gotWarn, "\n"), strings.Join(expand(tc.wantWarn), "\n"))
			}
			if err != nil {
				for _, s := range testSecrets {
					if strings.Contains(err.Error(), s) {
						t.Errorf("error contains secret %q", s)
					}
				}
			}
		})
	}
}

func TestSummaryNeverShowsSecrets(t *testing.T) {
	t.Parallel()
	creds := []Credential{
		{Name: "pos", Kind: KindPassword, ClientCode: "1", APIURL: DefaultAPIURL, Username: "u", SessionLength: 3600,
			Password: Secret{Value: secretPassword, Var: "SESSIOND_POS_PASSWORD"}},
		{Name: "cashier", Kind: KindPIN, Parent: "pos", ClientCode: "1", SessionLength: 60,
			PIN: Secret{Value: secretPIN, Var: "SESSIOND_CASHIER_PIN"}, AllowGIDs: []uint32{5}},
		{Name: "idp", Kind: KindIdentity, ClientCode: "2", SessionLength: 1,
			Token:  Secret{File: "/run/secrets/idp", Var: "SESSIOND_IDP_TOKEN"},
			APIURL: "https://proxy:" + secretPassword + "@erply.internal/{clientCode}/"},
		{Name: "sso", Kind: KindOAuth, ClientCode: "3", SessionLength: 10,
			Token: Secret{Value: secretToken, Var: "SESSIOND_SSO_TOKEN"},
			// Secrets of other kinds are never shown either.
			Password: Secret{Value: secretPassword}, PIN: Secret{Value: secretPIN}},
	}
	want := []string{
		"pos: kind=password clientCode=1 user=u secret=inline sessionLength=3600s",
		"cashier: kind=pin parent=pos clientCode=1 secret=inline sessionLength=60s allowGIDs=5",
		"idp: kind=identity clientCode=2 secret=file:/run/secrets/idp sessionLength=1s apiURL=https://proxy:xxxxx@erply.internal/{clientCode}/",
		"sso: kind=oauth clientCode=3 secret=inline sessionLength=10s",
	}
	for i, cr := range creds {
		got := cr.Summary()
		if got != want[i] {
			t.Errorf("Summary() = %q\nwant        %q", got, want[i])
		}
		for _, s := range testSecrets {
			if strings.Contains(got, s) {
				t.Errorf("Summary of %s contains secret %q", cr.Name, s)
			}
		}
	}
}

func TestEqual(t *testing.T) {
	t.Parallel()
	base := Credential{
		Name: "pos", Kind: KindPassword, ClientCode: "1", APIURL: DefaultAPIURL, Username: "u",
		Password: Secret{Value: "p", Var: "V"}, SessionLength: 3600,
		AllowUIDs: []uint32{1, 2}, AllowGIDs: []uint32{3}, SinkFile: "/k", SinkMode: 0o640,
	}
	clone := func() Credential {
		c := base
		c.AllowUIDs = slices.Clone(base.AllowUIDs)
		c.AllowGIDs = slices.Clone(base.AllowGIDs)
		return c
	}
	if !base.Equal(clone()) {
		t.Fatal("a copy is not Equal")
	}
	a, b := base, base
	a.AllowGIDs, b.AllowGIDs = nil, []uint32{}
	if !a.Equal(b) {
		t.Error("nil and empty GID lists differ; both mean anyone")
	}
	changes := map[string]func(*Credential){
		"name":           func(c *Credential) { c.Name = "other" },
		"kind":           func(c *Credential) { c.Kind = KindOAuth },
		"client code":    func(c *Credential) { c.ClientCode = "2" },
		"api url":        func(c *Credential) { c.APIURL = "https://x/" },
		"username":       func(c *Credential) { c.Username = "v" },
		"inline secret":  func(c *Credential) { c.Password.Value = "q" },
		"secret file":    func(c *Credential) { c.Password.File = "/p" },
		"pin":            func(c *Credential) { c.PIN.Value = "1" },
		"parent":         func(c *Credential) { c.Parent = "x" },
		"token":          func(c *Credential) { c.Token.File = "/t" },
		"session length": func(c *Credential) { c.SessionLength = 60 },
		"allowed uids":   func(c *Credential) { c.AllowUIDs = []uint32{2, 1} },
		"allowed gids":   func(c *Credential) { c.AllowGIDs = nil },
		"sink file":      func(c *Credential) { c.SinkFile = "/j" },
		"sink mode":      func(c *Credential) { c.SinkMode = 0o600 },
		"rotation":       func(c *Credential) { c.RotatePassword = RotateExpired },
		"fleet local":    func(c *Credential) { c.FleetLocal = true },
	}
	for name, change := range changes {
		c := clone()
		change(&c)
		if base.Equal(c) || c.Equal(base) {
			t.Errorf("a changed %s still counts as Equal", name)
		}
	}
}

// TestEqualCoversEveryField changes each field of Credential in turn,
// found by reflection (the fields of Secret too), and wants Equal to notice:
// a field added to Credential but not to Equal would let a reload keep a
// session made with the old setting. A field of a type this test cannot
// change fails it until the test learns how.
func TestEqualCoversEveryField(t *testing.T) {
	t.Parallel()
	base := Credential{
		Name: "pos", Kind: KindPassword, ClientCode: "1", APIURL: DefaultAPIURL, Username: "u",
		Password: Secret{Value: "p", File: "/p", Var: "V"}, PIN: Secret{Value: "1", File: "/pin", Var: "P"},
		Parent: "x", Token: Secret{Value: "t", File: "/t", Var: "T"}, SessionLength: 3600,
		AllowUIDs: []uint32{1, 2}, AllowGIDs: []uint32{3}, SinkFile: "/k", SinkMode: 0o640,
	}
	type leaf struct {
		name  string
		index []int
	}
	var leaves []leaf
	var collect func(typ reflect.Type, index []int, prefix string)
	collect = func(typ reflect.Type, index []int, prefix string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			ix := append(slices.Clone(index), i)
			if f.Type.Kind() == reflect.Struct {
				collect(f.Type, ix, prefix+f.Name+".")
				continue
			}
			leaves = append(leaves, leaf{prefix + f.Name, ix})
		}
	}
	collect(reflect.TypeFor[Credential](), nil, "")
	if len(leaves) < reflect.TypeFor[Credential]().NumField() {
		t.Fatalf("found %d fields, fewer than Credential has", len(leaves))
	}
	for _, l := range leaves {
		c := base
		c.AllowUIDs, c.AllowGIDs = slices.Clone(base.AllowUIDs), slices.Clone(base.AllowGIDs)
		f := reflect.ValueOf(&c).Elem().FieldByIndex(l.index)
		switch {
		case !f.CanSet():
			t.Errorf("Credential.%s is unexported; teach this test to change it", l.name)
			continue
		case f.Kind() == reflect.String:
			f.SetString(f.String() + "-changed")
		case f.CanInt():
			f.SetInt(f.Int() + 1)
		case f.CanUint():
			f.SetUint(f.Uint() + 1)
		case f.Kind() == reflect.Bool:
			f.SetBool(!f.Bool())
		case f.Kind() == reflect.Slice:
			f.Set(reflect.Append(f, reflect.New(f.Type().Elem()).Elem()))
		default:
			t.Errorf("Credential.%s is a %s; teach this test to change it", l.name, f.Type())
			continue
		}
		if base.Equal(c) || c.Equal(base) {
			t.Errorf("Credential.%s changed and Equal still holds: Equal does not compare it", l.name)
		}
	}
}

// TestEqualAcrossReload is the reload case: loading the same environment
// twice gives Equal credentials, and changing one credential's setting
// leaves the others Equal.
func TestEqualAcrossReload(t *testing.T) {
	t.Parallel()
	m := minimalEnv()
	m["SESSIOND_CREDENTIALS"] = "pos,sso"
	m["SESSIOND_SSO_KIND"] = "oauth"
	m["SESSIOND_SSO_CLIENT_CODE"] = "9"
	m["SESSIOND_SSO_TOKEN"] = secretToken
	first := mustLoad(t, environ(m))
	m["SESSIOND_SSO_SESSION_LENGTH"] = "600"
	second := mustLoad(t, environ(m))
	if !first.Credentials[0].Equal(second.Credentials[0]) {
		t.Error("unchanged pos is not Equal after reload")
	}
	if first.Credentials[1].Equal(second.Credentials[1]) {
		t.Error("changed sso is still Equal after reload")
	}
}
