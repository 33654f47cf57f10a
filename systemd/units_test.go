// Package systemd_test checks the unit files, the sysusers line and the env
// file example in this directory against systemd's tools and the daemon's
// own configuration loader.
package systemd_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/sdnotify"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestUnitsVerify runs scripts/verify-units.sh: systemd-analyze verify and
// security, and systemd-sysusers --dry-run.
func TestUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed (Debian: apt-get install systemd): unit files NOT verified")
	}
	out, err := exec.Command("bash", "../scripts/verify-units.sh").CombinedOutput()
	t.Logf("scripts/verify-units.sh:\n%s", out)
	if err != nil {
		t.Fatalf("scripts/verify-units.sh: %v", err)
	}
}

// unit reads a unit file's assignments; a key assigned more than once keeps
// every value in order.
func unit(t *testing.T, name string) map[string][]string {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kv := make(map[string][]string)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not an assignment", name, line)
		}
		kv[k] = append(kv[k], v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return kv
}

func one(t *testing.T, u map[string][]string, key string) string {
	t.Helper()
	if len(u[key]) != 1 {
		t.Fatalf("%s= set %d times, want once", key, len(u[key]))
	}
	return u[key][0]
}

// TestUnitsMatchTheDaemon checks what the units and the daemon must agree on
// and systemd cannot know: the default socket path and mode, the descriptor
// name the daemon picks, the env file, and the sd_notify protocol.
func TestUnitsMatchTheDaemon(t *testing.T) {
	sock := unit(t, "erply-sessiond.socket")
	svc := unit(t, "erply-sessiond.service")

	if got := one(t, sock, "ListenStream"); got != config.DefaultSocket {
		t.Errorf("socket unit listens on %s, the daemon's default SESSIOND_SOCKET is %s", got, config.DefaultSocket)
	}
	mode, err := strconv.ParseUint(one(t, sock, "SocketMode"), 8, 32)
	if err != nil || os.FileMode(mode) != config.DefaultSocketMode {
		t.Errorf("SocketMode=%s, the daemon's default SESSIOND_SOCKET_MODE is %04o", one(t, sock, "SocketMode"), config.DefaultSocketMode)
	}
	if got := one(t, sock, "FileDescriptorName"); got != sdnotify.SocketName {
		t.Errorf("FileDescriptorName=%s, the daemon picks %q", got, sdnotify.SocketName)
	}
	if got := one(t, sock, "Service"); got != "erply-sessiond.service" {
		t.Errorf("socket activates %s", got)
	}
	// The socket lives in the service's runtime directory, which therefore
	// must outlive a stopped service.
	if got, want := "/run/"+one(t, svc, "RuntimeDirectory"), filepath.Dir(config.DefaultSocket); got != want {
		t.Errorf("RuntimeDirectory is %s, the socket's directory %s", got, want)
	}
	if got := one(t, svc, "RuntimeDirectoryPreserve"); got != "yes" {
		t.Errorf("RuntimeDirectoryPreserve=%s: stopping the service would delete the socket unit's socket", got)
	}
	// Sessions saved across restarts: the daemon takes systemd's
	// $STATE_DIRECTORY and refuses one others can write; its keys are
	// nobody else's to read either.
	if got := one(t, svc, "StateDirectory"); got != "erply-sessiond" {
		t.Errorf("StateDirectory=%s, want erply-sessiond (/var/lib/erply-sessiond, which the package's purge removes)", got)
	}
	if got := one(t, svc, "StateDirectoryMode"); got != "0700" {
		t.Errorf("StateDirectoryMode=%s, want 0700: the state file holds session keys", got)
	}
	if got, want := one(t, sock, "SocketGroup"), one(t, svc, "Group"); got != want {
		t.Errorf("socket group %s is not the service's group %s", got, want)
	}

	envFile := strings.TrimPrefix(one(t, svc, "EnvironmentFile"), "-")
	if want := "SESSIOND_ENV_FILE=" + envFile; one(t, svc, "Environment") != want {
		t.Errorf("Environment=%s, want %s so that a reload re-reads the EnvironmentFile", one(t, svc, "Environment"), want)
	}
	for key, want := range map[string]string{
		"Type":         "notify",
		"NotifyAccess": "main",
		"ExecStart":    "/usr/local/bin/erply-sessiond",
		"ExecReload":   "/bin/kill -HUP $MAINPID",
		"User":         "erply-sessiond",
	} {
		if got := one(t, svc, key); got != want {
			t.Errorf("%s=%s, want %s", key, got, want)
		}
	}
	if len(svc["PrivateUsers"]) != 0 {
		t.Error("PrivateUsers= maps every caller to nobody and breaks ALLOW_UIDS")
	}
}

// TestEnvExampleLoads feeds env.example, with its secret files made real,
// to the daemon's configuration loader: it must parse, validate and name
// nothing the daemon does not read.
func TestEnvExampleLoads(t *testing.T) {
	f, err := os.Open("env.example")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vars, err := config.ParseEnvFile(f)
	if err != nil {
		t.Fatalf("env.example: %v", err)
	}
	dir := t.TempDir()
	var environ []string
	for k, v := range vars {
		if strings.HasSuffix(k, "_FILE") {
			if !strings.HasPrefix(v, "/etc/erply-sessiond/") {
				t.Errorf("%s=%s: keep the example's secrets in /etc/erply-sessiond", k, v)
			}
			v = filepath.Join(dir, filepath.Base(v))
			if err := os.WriteFile(v, []byte("not-a-real-secret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		environ = append(environ, k+"="+v)
	}
	c, err := config.Load(environ)
	if err != nil {
		t.Fatalf("env.example does not load:\n%v", err)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("env.example draws warnings:\n%s", strings.Join(c.Warnings, "\n"))
	}
	var kinds []string
	for _, cr := range c.Credentials {
		kinds = append(kinds, cr.Name+":"+string(cr.Kind))
	}
	if got, want := strings.Join(kinds, ","), "pos:password,cashier:pin"; got != want {
		t.Errorf("credentials %s, want %s", got, want)
	}
	if c.Credentials[0].Password.File == "" || c.Credentials[1].PIN.File == "" {
		t.Error("the example credentials should show the *_FILE form of their secrets")
	}
}

// TestEnvExampleDocumentsEverySetting keeps env.example complete: each global
// variable the daemon reads appears in it, set or commented out.
func TestEnvExampleDocumentsEverySetting(t *testing.T) {
	b, err := os.ReadFile("env.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{
		config.VarCredentials, config.VarSocket, config.VarSocketMode, config.VarHTTPAddr,
		config.VarHTTPSessions, config.VarLogLevel, config.VarLogFormat, config.VarAPIURL,
		config.VarEndpointCooldown, config.VarRefreshFraction, config.VarExpiryMargin,
		config.VarProxyConcurrency, config.VarEnvFile, config.VarEnvFileWatch, config.VarStateDir,
		config.VarFleetRedisURL, config.VarFleetRedisURL + "_FILE", config.VarFleetName, config.VarFleetKeyFile, config.VarFleetLockTTL,
	} {
		if !strings.Contains(string(b), v) {
			t.Errorf("env.example does not mention %s", v)
		}
	}
	for _, sfx := range []string{
		"KIND", "CLIENT_CODE", "USERNAME", "PASSWORD_FILE", "PARENT", "PIN_FILE",
		"TOKEN_FILE", "SESSION_LENGTH", "API_URL", "ALLOW_UIDS", "ALLOW_GIDS",
		"SINK_FILE", "SINK_MODE", "ROTATE_PASSWORD", "FLEET",
	} {
		if !strings.Contains(string(b), "_"+sfx+"=") {
			t.Errorf("env.example shows no credential setting *_%s", sfx)
		}
	}
}
